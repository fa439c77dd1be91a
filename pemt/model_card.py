"""Model cards for fine-tuned PEMT classifiers, built with `huggingface_hub.ModelCard` from the training arguments and
evaluation results. What is uploaded names Hub ids only: local paths are left out of the card's metadata and prose,
and of the published training arguments ([`public_training_arguments`])."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .model.modeling_pemt import PemtForAudioVisualClassification

TEMPLATE = Path(__file__).with_name("model_card_template.md")
# The Hub's task for video classifiers; PEMT's own pipeline name ("audio-visual-classification") is not a Hub task.
PIPELINE_TAG = "video-classification"
DEFAULT_LICENSE = "apache-2.0"
# `owner/name` only: a bare name is more often a local folder's name (the demo's "data") than a legacy canonical repo.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_id(value: object) -> str | None:
    """`value` when it reads as a Hub repository id (`owner/name`) and is not a local path, else `None`."""
    if not isinstance(value, str) or not _REPO_ID.match(value) or value.endswith((".", "-")):
        return None
    return None if os.path.exists(value) else value


def _is_local_path(value: object) -> bool:
    if not isinstance(value, (str, os.PathLike)):
        return False
    text = os.fspath(value)
    return os.path.isabs(text) or text.startswith(("./", "../", "~")) or (os.sep in text and os.path.exists(text)) or (
        os.path.exists(text) and hub_id(text) is None
    )


def public_training_arguments(training_arguments: dict) -> dict:
    """The training arguments without unset values and without local paths (folders, files, caches): what may be
    shown in a card or uploaded as `training_args.json`. A Hub id in `model_name_or_path` or `dataset_name` stays."""
    public = {}
    for key, value in training_arguments.items():
        if value is None or _is_local_path(value):
            continue
        if isinstance(value, (list, tuple)) and any(_is_local_path(v) for v in value):
            continue
        public[key] = value
    return public


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


def build_model_card(
    model: PemtForAudioVisualClassification,
    repo_id: str,
    dataset_name: str | None,
    training_arguments: dict,
    evaluation: dict | None,
    base_model: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> ModelCard:
    """
    The card of a fine-tuned classifier: metadata the Hub validates (`pipeline_tag: video-classification`, `license`,
    `base_model` and `datasets` as Hub ids when known, a `model-index` with the evaluation) and prose.

    Args:
        dataset_name (`str`, *optional*): a Hub data-set id (listed under `datasets`), or a local name or path, of
            which only the last component is shown.
        base_model (`str`, *optional*): the pretrained model fine-tuned from; by default `model_name_or_path` of the
            training arguments when that is a Hub id.
    """
    config = model.config
    dataset_id = hub_id(dataset_name)
    display_name = dataset_id or (Path(os.fspath(dataset_name)).name if dataset_name else None)
    base_model = base_model or hub_id(training_arguments.get("model_name_or_path"))
    metrics = {k: v for k, v in (evaluation or {}).items() if isinstance(v, float)}
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Audio-visual video classification",
            dataset_type=dataset_id or "local",
            dataset_name=display_name or "held-out clips",
            metric_type=name,
            metric_value=round(value, 4),
            metric_name=name.replace("_", " "),
        )
        for name, value in metrics.items()
    ]
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=license,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        tags=["pemt", "avbert", "audio-visual", "audio-visual-classification", "custom_code"],
        eval_results=eval_results or None,
    )
    evaluation_rows = (
        "| metric | value |\n|---|---|\n" + _rows({k: f"{v:.4f}" for k, v in metrics.items()})
        + f"\n\n{evaluation.get('num_clips', '?')} held-out clips, {evaluation.get('num_temporal_views', 1)} temporal view(s) each."
        if metrics
        else "Not evaluated."
    )
    shown_arguments = {k: v for k, v in public_training_arguments(training_arguments).items() if k != "output_dir"}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        dataset_description=f"`{display_name}`" if display_name else "a local data set",
        modality=config.classifier_modality,
        problem_type=config.problem_type or "single_label_classification",
        num_segments=config.num_segments,
        share_layers=config.share_layers,
        share_modalities=config.share_modalities,
        low_rank_dim=config.low_rank_dim,
        parameter_rows="\n".join(f"| {k} | {v / 1e6:.2f}M |" for k, v in parameter_counts(model).items()),
        labels=", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels)),
        training_rows="| argument | value |\n|---|---|\n" + _rows(shown_arguments) if shown_arguments else "Not recorded.",
        evaluation_rows=evaluation_rows,
        frames_per_segment=config.frames_per_segment,
        frame_stride=config.frame_stride,
        video_fps=config.video_fps,
        audio_sampling_rate=config.audio_sampling_rate,
    )


def render_model_card(
    model: PemtForAudioVisualClassification,
    repo_id: str,
    dataset_name: str | None,
    training_arguments: dict,
    evaluation: dict | None,
    **kwargs,
) -> str:
    """The card's text (see [`build_model_card`])."""
    return str(build_model_card(model, repo_id, dataset_name, training_arguments, evaluation, **kwargs))


def write_model_card(
    model: PemtForAudioVisualClassification,
    output_dir: str | Path,
    dataset_name: str | None,
    training_arguments: dict,
    evaluation: dict | None,
    repo_id: str | None = None,
    **kwargs,
) -> Path:
    """Writes `README.md` beside the weights (the file the Hub shows as the model card)."""
    output_dir = Path(output_dir)
    path = output_dir / "README.md"
    card = build_model_card(model, repo_id or output_dir.name, dataset_name, training_arguments, evaluation, **kwargs)
    card.save(path)
    return path
