"""Fine-tuning PEMT for classification: `pemt finetune ...` or `accelerate launch -m pemt.training.finetune ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..model.configuration_pemt import CLASSIFIER_MODALITIES
from ..data.loading import label_names
from ..hub import TRAINING_ARGS_FILE
from ..model_card import write_model_card
from ..model.modeling_pemt import PemtForAudioVisualClassification
from ..model.processing_pemt import PemtProcessor
from .data_setup import add_data_arguments, evaluation_callback, keep_rows, preprocess_splits, training_batch
from .evaluate import compute_metrics, evaluate_model
from .loop import HISTORY_FILE, Trainer, add_training_arguments, build_accelerator, load_model_config, parse_overrides
from .plots import plot_history

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pemt finetune", description="Fine-tune PEMT for audio-visual classification.")
    add_training_arguments(parser)
    add_data_arguments(parser)
    group = parser.add_argument_group("fine-tuning")
    group.add_argument(
        "--model_name_or_path", help="A pretrained PEMT directory or Hub id (default: train from scratch with --model_config)."
    )
    group.add_argument("--modality", choices=CLASSIFIER_MODALITIES, default="audio-visual", help="Inputs the classifier reads.")
    group.add_argument(
        "--problem_type", choices=PROBLEM_TYPES, default="single_label_classification",
        help="multi_label trains with binary cross-entropy on one-hot targets and is evaluated by mAP.",
    )
    group.add_argument("--linear_probe", action="store_true", help="Freeze the backbone; train the heads only.")
    group.add_argument("--head_learning_rate", type=float, default=1e-3, help="Learning rate of the heads.")
    group.add_argument("--num_temporal_views", type=int, default=1, help="Views per clip in the final evaluation.")
    group.add_argument("--dataset_name", default=None, help="Name of the data set in the model card.")
    parser.set_defaults(learning_rate=1e-4, per_device_train_batch_size=5)
    return parser


def load_processor(args: argparse.Namespace) -> PemtProcessor:
    """The pretrained model's processor, or one built from `--model_config` when training from scratch."""
    if args.model_name_or_path:
        return PemtProcessor.from_pretrained(args.model_name_or_path)
    return PemtProcessor.from_model_config(load_model_config(args.model_config, **parse_overrides(args.config_overrides)))


def build_model(args: argparse.Namespace, id2label: dict[int, str]) -> PemtForAudioVisualClassification:
    """The classifier with its label set: pretrained backbone and fresh heads, or all from scratch."""
    labels = {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "classifier_modality": args.modality,
        "problem_type": args.problem_type,
    }
    if args.model_name_or_path:
        return PemtForAudioVisualClassification.from_pretrained(args.model_name_or_path, **labels)
    return PemtForAudioVisualClassification(
        load_model_config(args.model_config, **labels, **parse_overrides(args.config_overrides))
    )


@torch.no_grad()
def evaluate_preprocessed(model: PemtForAudioVisualClassification, accelerator: Accelerator, loader) -> dict[str, float]:
    """Metrics on the preprocessed evaluation split (one view per clip), for progress during training."""
    model.eval()
    scores, labels = [], []
    for batch in loader:
        batch_labels = batch.pop("labels")
        with accelerator.autocast():
            logits = model(**{k: v.to(accelerator.device) for k, v in model.select_inputs(batch).items()}).logits
        scores.append(model.probabilities(logits).cpu())
        labels.append(batch_labels)
    scores, labels = torch.cat(scores), torch.cat(labels)
    multi_label = model.config.problem_type == "multi_label_classification"
    if multi_label:
        labels = torch.nn.functional.one_hot(labels, model.config.num_labels)
    return compute_metrics(scores, labels, multi_label)


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    processor = load_processor(args)
    train, evaluation, raw_train, raw_eval = preprocess_splits(args, processor, accelerator)
    model = build_model(args, label_names(raw_train))
    if args.linear_probe:
        model.freeze_backbone()
    groups = [{"params": model.head_parameters(), "lr": args.head_learning_rate}]
    if not args.linear_probe:
        groups.append({"params": list(model.pemt.parameters()), "lr": args.learning_rate})
    multi_label = args.problem_type == "multi_label_classification"

    def classification_batch(rows):
        batch = training_batch(processor)(rows)
        labels = batch["labels"]
        if multi_label:
            labels = torch.nn.functional.one_hot(labels, model.config.num_labels).float()
        return {**model.select_inputs(batch), "labels": labels}

    evaluate = evaluation_callback(evaluation, processor, args.per_device_eval_batch_size, evaluate_preprocessed)
    trainer = Trainer(
        accelerator, model, args, train, collate_fn=keep_rows, prepare_batch=classification_batch,
        parameter_groups=groups, evaluate=evaluate, drop_last=False,
    )
    trainer.train()
    results = None
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        final = trainer.unwrapped_model()
        final.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / TRAINING_ARGS_FILE).write_text(json.dumps(vars(args), indent=2) + "\n")
        plot_history(output_dir / HISTORY_FILE, output_dir / "finetuning.png", "PEMT fine-tuning")
        if raw_eval is not None:
            results = evaluate_model(final, processor, raw_eval, output_dir, args.num_temporal_views, args.per_device_eval_batch_size)
        dataset_name = args.dataset_name or Path(args.train_dir or args.train_file).name
        card = write_model_card(final, output_dir, dataset_name, vars(args), results)
        shown = {k: v for k, v in (results or {}).items() if isinstance(v, float)}
        accelerator.print(f"Fine-tuned model: {output_dir}\nModel card: {card}\nEvaluation: {json.dumps(shown)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
