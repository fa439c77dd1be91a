"""Fine-tuning PEMT for classification: `pemt finetune ...` or `accelerate launch -m pemt.training.finetune ...`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..data.loading import label_names
from ..errors import PemtUsageError
from ..hub import TRAINING_ARGS_FILE
from ..model.configuration_pemt import PemtConfig
from ..model.modeling_pemt import PemtForAudioVisualClassification
from ..model.processing_pemt import PemtProcessor
from ..model_card import write_model_card
from .arguments import ClassificationArguments, ModelArguments, PemtTrainingArguments, load_model_config, parse_arguments
from .authors_protocols import apply_protocol, authors_parameter_groups
from .data_setup import DataArguments, evaluation_callback, setup_data
from .evaluate import compute_metrics, evaluate_model
from .loop import TrainingLoop, build_accelerator, finish_output_dir, prepare_output_dir
from .plots import plot_history
from .run_folder import HISTORY_FILE, run_fingerprint

DESCRIPTION = "Fine-tune PEMT for audio-visual classification."
GROUPS = (ModelArguments, DataArguments, PemtTrainingArguments, ClassificationArguments)


def parse_finetuning_arguments(
    argv: list[str] | None,
) -> tuple[ModelArguments, DataArguments, PemtTrainingArguments, ClassificationArguments]:
    return parse_arguments("pemt finetune", DESCRIPTION, GROUPS, argv, learning_rate=1e-4, per_device_train_batch_size=5)


# Fields that give weights their shapes (or decide which weights exist): a pretrained model's cannot change.
WEIGHT_SHAPE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings",
    "low_rank_dim", "share_layers", "share_modalities", "visual_cnn_width", "visual_cnn_depths",
    "visual_cnn_temporal_kernels", "visual_stem_temporal_kernel", "audio_cnn_width", "audio_cnn_depths",
    "audio_separable_stages",
)


def pretrained_config(model_args: ModelArguments, **fields) -> PemtConfig:
    """The pretrained model's config with `fields` set and `--config_overrides` applied on top (e.g. fewer segments
    than pretraining used, as the paper fine-tunes). Raises `PemtUsageError` naming the field where a change cannot
    apply to the pretrained weights."""
    source = model_args.model_name_or_path
    config = PemtConfig.from_pretrained(source, **fields)
    if not model_args.config_overrides:
        return config
    before = config.to_dict()
    try:
        config.update_from_string(model_args.config_overrides)
    except (ValueError, TypeError) as err:
        raise PemtUsageError(f"--config_overrides {model_args.config_overrides!r}: {err}") from None
    after = config.to_dict()
    fixed = [name for name in WEIGHT_SHAPE_FIELDS if after[name] != before[name]]
    if fixed:
        raise PemtUsageError(
            f"--config_overrides cannot change {', '.join(fixed)} of the pretrained model {source}: its weights have "
            "that shape."
        )
    if config.num_segments + 1 > config.max_position_embeddings:
        raise PemtUsageError(
            f"--config_overrides num_segments={config.num_segments}: the pretrained model {source} has "
            f"{config.max_position_embeddings} position slots, room for at most {config.max_position_embeddings - 1} "
            "segments."
        )
    try:
        config.check_values()
    except ValueError as err:
        raise PemtUsageError(f"--config_overrides {model_args.config_overrides!r}: {err}") from None
    return config


def load_processor(model_args: ModelArguments, model_overrides: dict | None = None) -> PemtProcessor:
    """The pretrained model's processor, or one built from `--model_config` when training from scratch. With
    `model_overrides` (a protocol's segments or audio window) or `--config_overrides` it is built from the overridden
    config."""
    if model_args.model_name_or_path and not model_overrides and not model_args.config_overrides:
        return PemtProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.model_name_or_path:
        return PemtProcessor.from_model_config(pretrained_config(model_args, **(model_overrides or {})))
    return PemtProcessor.from_model_config(load_model_config(model_args, **(model_overrides or {})))


def build_model(
    model_args: ModelArguments, task: ClassificationArguments, id2label: dict[int, str], model_overrides: dict | None = None
) -> PemtForAudioVisualClassification:
    """The classifier with its label set: pretrained backbone and fresh heads, or all from scratch."""
    labels = {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "classifier_modality": task.modality,
        "problem_type": task.problem_type,
        **(model_overrides or {}),
    }
    if task.classifier_head:
        labels["classifier_head"] = task.classifier_head
    if model_args.model_name_or_path:
        config = pretrained_config(model_args, **labels)
        return PemtForAudioVisualClassification.from_pretrained(model_args.model_name_or_path, config=config)
    return PemtForAudioVisualClassification(load_model_config(model_args, **labels))


@torch.no_grad()
def evaluate_preprocessed(model: PemtForAudioVisualClassification, accelerator: Accelerator, loader) -> dict[str, float]:
    """Metrics on the preprocessed evaluation split (one view per clip), for progress during training. Each process
    scores its share; `gather_for_metrics` joins them without the samples repeated to even out the last batch."""
    model.eval()
    scores, labels = [], []
    for batch in loader:
        batch_labels = batch.pop("labels").to(accelerator.device)
        with accelerator.autocast():
            logits = model(**{k: v.to(accelerator.device) for k, v in model.select_inputs(batch).items()}).logits
        batch_scores, batch_labels = accelerator.gather_for_metrics((model.probabilities(logits).float(), batch_labels))
        scores.append(batch_scores.cpu())
        labels.append(batch_labels.cpu())
    scores, labels = torch.cat(scores), torch.cat(labels)
    multi_label = model.config.problem_type == "multi_label_classification"
    if multi_label:
        labels = torch.nn.functional.one_hot(labels, model.config.num_labels)
    return compute_metrics(scores, labels, multi_label)


def main(argv: list[str] | None = None) -> dict | None:
    model_args, data_args, args, task = parse_finetuning_arguments(argv)
    model_overrides = None
    if task.authors_protocol:
        # Before the fingerprint: a resumed run must see the same settings.
        model_overrides = apply_protocol(task.authors_protocol, (args, task), sys.argv[1:] if argv is None else argv)
        task.modality = model_overrides.get("classifier_modality", task.modality)
    accelerator = build_accelerator(args)
    fingerprint = run_fingerprint(model_args, data_args, args, task)
    set_seed(args.seed)
    processor = load_processor(model_args, model_overrides)  # a bad config fails here, before the output folder is touched
    prepare_output_dir(accelerator, args, fingerprint)
    data = setup_data(
        data_args, args.output_dir, processor, accelerator, args.seed, args.per_device_train_batch_size,
        args.dataloader_num_workers, args.num_train_epochs,
    )
    raw_train, raw_eval = data.raw_train, data.raw_eval
    model = build_model(model_args, task, label_names(raw_train), model_overrides)
    if task.linear_probe:
        model.freeze_backbone()
    if task.authors_protocol:
        groups = authors_parameter_groups(
            model, task.head_learning_rate, args.learning_rate, args.weight_decay, not task.linear_probe
        )
    else:
        groups = [{"params": model.head_parameters(), "lr": task.head_learning_rate}]
        if not task.linear_probe:
            groups.append({"params": list(model.pemt.parameters()), "lr": args.learning_rate})
    multi_label = task.problem_type == "multi_label_classification"

    def classification_batch(rows):
        batch = data.to_batch(rows)
        labels = batch["labels"]
        if multi_label:
            labels = torch.nn.functional.one_hot(labels, model.config.num_labels).float()
        return {**model.select_inputs(batch), "labels": labels}

    evaluate = evaluation_callback(data, args.per_device_eval_batch_size, evaluate_preprocessed)
    loop = TrainingLoop(
        accelerator, model, args, data.train, collate_fn=data.collate_fn, fingerprint=fingerprint,
        prepare_batch=classification_batch, parameter_groups=groups, evaluate=evaluate, drop_last=False,
    )
    loop.train()
    results = None
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        final = loop.unwrapped_model()
        final.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        all_args = {**asdict(model_args), **asdict(data_args), **asdict(args), **asdict(task)}
        (output_dir / TRAINING_ARGS_FILE).write_text(json.dumps(all_args, indent=2) + "\n")
        plot_history(output_dir / HISTORY_FILE, output_dir / "finetuning.png", "PEMT fine-tuning")
        if raw_eval is not None:
            results = evaluate_model(
                final, processor, raw_eval, output_dir, task.num_temporal_views, args.per_device_eval_batch_size,
                task.num_spatial_crops,
            )
        dataset_name = data_args.dataset_name or Path(data_args.train_dir or data_args.train_file).name
        card = write_model_card(final, output_dir, dataset_name, all_args, results)
        shown = {k: v for k, v in (results or {}).items() if isinstance(v, float)}
        accelerator.print(f"Fine-tuned model: {output_dir}\nModel card: {card}\nEvaluation: {json.dumps(shown)}")
        if args.push_to_hub:
            from ..hub import push_to_hub

            accelerator.print(f"Pushed: {push_to_hub(output_dir, args.hub_model_id, private=args.hub_private_repo)}")
    finish_output_dir(accelerator, args, fingerprint)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    from ..cli import module_main

    module_main("finetune")
