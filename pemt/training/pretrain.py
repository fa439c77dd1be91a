"""Self-supervised pretraining of PEMT: `pemt pretrain ...` or `accelerate launch -m pemt.training.pretrain ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..model.modeling_pemt import PemtForPreTraining
from ..model.processing_pemt import PemtProcessor
from .data_setup import add_data_arguments, evaluation_callback, keep_rows, preprocess_splits, training_batch
from .loop import HISTORY_FILE, Trainer, add_training_arguments, build_accelerator, load_model_config, parse_overrides
from .plots import plot_history

PRETRAINING_METRICS = ("visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "cpp_loss", "mep_accuracy", "cpp_accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pemt pretrain",
        description="Pretrain PEMT end to end on unlabeled video with masked embedding prediction and correct pair prediction.",
    )
    add_training_arguments(parser)
    add_data_arguments(parser)
    # From scratch, the CNNs and Transformers need the larger step: at 1e-3 correct pair prediction on the demo data
    # had not left chance after 300 steps.
    parser.set_defaults(learning_rate=2e-3)
    return parser


@torch.no_grad()
def evaluate_pretraining(model: PemtForPreTraining, accelerator: Accelerator, loader) -> dict[str, float]:
    """Mean loss and accuracies on held-out clips (masks and swaps drawn afresh; the caller fixes the seed)."""
    model.eval()
    totals: dict[str, float] = {}
    batches = 0
    for batch in loader:
        if batch["pixel_values"].shape[0] < 2:
            continue  # swaps and negatives need another clip
        batch.pop("labels")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            output = model(**batch)
        for name in ("loss", *PRETRAINING_METRICS):
            totals[name] = totals.get(name, 0.0) + float(output[name])
        batches += 1
    if batches == 0:
        raise ValueError("The evaluation set has no batch of two or more clips; pretraining evaluation needs pairs.")
    return {k: v / batches for k, v in totals.items()}


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    args = build_parser().parse_args(argv)
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    config = load_model_config(args.model_config, **parse_overrides(args.config_overrides))
    processor = PemtProcessor.from_model_config(config)
    train, evaluation, _, _ = preprocess_splits(args, processor, accelerator)
    model = PemtForPreTraining(config)

    def without_labels(rows):
        batch = training_batch(processor)(rows)
        batch.pop("labels")
        return batch

    evaluate = evaluation_callback(evaluation, processor, args.per_device_eval_batch_size, evaluate_pretraining)
    trainer = Trainer(
        accelerator, model, args, train, collate_fn=keep_rows, metric_names=PRETRAINING_METRICS,
        prepare_batch=without_labels, evaluate=evaluate,
    )
    trainer.train()
    final_metrics = trainer.last_eval_metrics
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        trainer.unwrapped_model().save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        plot = plot_history(output_dir / HISTORY_FILE, output_dir / "pretraining.png", "PEMT pretraining")
        if final_metrics is not None:
            (output_dir / "eval_results.json").write_text(json.dumps(final_metrics, indent=2) + "\n")
        accelerator.print(f"Pretrained model and processor: {output_dir}\nPlot: {plot}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_metrics


if __name__ == "__main__":
    main()
