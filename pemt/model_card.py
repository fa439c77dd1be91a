"""Model cards for fine-tuned PEMT classifiers, filled from the training arguments and evaluation results."""

from __future__ import annotations

from pathlib import Path


from .model.modeling_pemt import PemtForAudioVisualClassification

TEMPLATE = Path(__file__).with_name("model_card_template.md")


def parameter_counts(model: PemtForAudioVisualClassification) -> dict[str, int]:
    """Parameters of each part: the CNNs, the Transformers (`model.pemt.encoder`), embeddings and heads."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    backbone = model.pemt
    embeddings = sum(count(m) for m in (backbone.visual_embeddings, backbone.audio_embeddings, backbone.multimodal_embeddings))
    return {
        "visual CNN": count(backbone.visual_cnn),
        "audio CNN": count(backbone.audio_cnn),
        "Transformers": count(backbone.encoder),
        "projections and embeddings": embeddings,
        "classification heads": count(model) - count(backbone),
        "total": count(model),
    }


def _rows(values: dict) -> str:
    return "\n".join(f"| {key} | {value} |" for key, value in values.items())


def render_model_card(
    model: PemtForAudioVisualClassification,
    repo_id: str,
    dataset_name: str,
    training_arguments: dict,
    evaluation: dict | None,
) -> str:
    """The card's text: YAML metadata (`library_name`, `pipeline_tag`, `tags`, `datasets`, `model-index`) and prose."""
    config = model.config
    metrics = {k: v for k, v in (evaluation or {}).items() if isinstance(v, float)}
    metrics_yaml = "\n".join(
        f"    - type: {name}\n      value: {value:.4f}\n      name: {name.replace('_', ' ')}" for name, value in metrics.items()
    ) or "    []"
    evaluation_rows = (
        "| metric | value |\n|---|---|\n" + _rows({k: f"{v:.4f}" for k, v in metrics.items()})
        + f"\n\n{evaluation.get('num_clips', '?')} held-out clips, {evaluation.get('num_temporal_views', 1)} temporal view(s) each."
        if metrics
        else "Not evaluated."
    )
    shown_arguments = {k: v for k, v in training_arguments.items() if v is not None and k != "output_dir"}
    return TEMPLATE.read_text().format(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        dataset_name=dataset_name,
        metrics_yaml=metrics_yaml,
        modality=config.classifier_modality,
        problem_type=config.problem_type or "single_label_classification",
        num_segments=config.num_segments,
        share_layers=config.share_layers,
        share_modalities=config.share_modalities,
        low_rank_dim=config.low_rank_dim,
        parameter_rows="\n".join(f"| {k} | {v / 1e6:.2f}M |" for k, v in parameter_counts(model).items()),
        labels=", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels)),
        training_rows="| argument | value |\n|---|---|\n" + _rows(shown_arguments),
        evaluation_rows=evaluation_rows,
        frames_per_segment=config.frames_per_segment,
        frame_stride=config.frame_stride,
        video_fps=config.video_fps,
        audio_sampling_rate=config.audio_sampling_rate,
    )


def write_model_card(
    model: PemtForAudioVisualClassification,
    output_dir: str | Path,
    dataset_name: str,
    training_arguments: dict,
    evaluation: dict | None,
    repo_id: str | None = None,
) -> Path:
    """Writes `README.md` beside the weights (the file the Hub shows as the model card)."""
    output_dir = Path(output_dir)
    path = output_dir / "README.md"
    path.write_text(render_model_card(model, repo_id or output_dir.name, dataset_name, training_arguments, evaluation))
    return path


