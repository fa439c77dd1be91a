"""Self-supervised pretraining of PEMT: `pemt pretrain ...` or `accelerate launch -m pemt.training.pretrain ...`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..model.modeling_pemt import PemtForPreTraining
from ..model.processing_pemt import PemtProcessor
from .arguments import ModelArguments, PemtTrainingArguments, load_model_config, parse_arguments
from .data_setup import DataArguments, evaluation_callback, setup_data
from .loop import TrainingLoop, build_accelerator, finish_output_dir, prepare_output_dir
from .plots import plot_history
from .run_folder import HISTORY_FILE, run_fingerprint

PRETRAINING_METRICS = ("visual_mep_loss", "audio_mep_loss", "multimodal_mep_loss", "cpp_loss", "mep_accuracy", "cpp_accuracy")
DESCRIPTION = "Pretrain PEMT end to end on unlabeled video with masked embedding prediction and correct pair prediction."


def parse_pretraining_arguments(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, PemtTrainingArguments]:
    # From scratch, the CNNs and Transformers need the larger step: at 1e-3 correct pair prediction on the demo data
    # had not left chance after 300 steps.
    return parse_arguments(
        "pemt pretrain", DESCRIPTION, (ModelArguments, DataArguments, PemtTrainingArguments), argv, learning_rate=2e-3
    )


# Held-out MEP accuracy is measured with one sampler for every model, so that runs trained with different samplers
# compare: uniform negatives, and masks, swaps and negatives drawn from a generator with this seed.
EVALUATION_SAMPLER = "uniform"
EVALUATION_SEED = 0


@torch.no_grad()
def evaluate_pretraining(model: PemtForPreTraining, accelerator: Accelerator, loader) -> dict[str, float]:
    """Mean loss and accuracies over held-out batches. Every model is scored on the same draws (masks, swaps, uniform
    negatives from a generator seeded with `EVALUATION_SEED`), whatever sampler it was trained with. Each process
    evaluates its share of the batches; the sums are added across processes."""
    model.eval()
    generator = torch.Generator().manual_seed(EVALUATION_SEED)
    names = ("loss", *PRETRAINING_METRICS)
    # Per metric: the sum over batches and the number of batches that measured it (NaN: nothing of the kind in the
    # batch, e.g. no masked segment, or the objective is switched off).
    totals = torch.zeros(2, len(names), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        if batch["pixel_values"].shape[0] < 2:
            continue  # swaps and negatives need another clip
        batch.pop("labels")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            output = model(**batch, negative_sampling=EVALUATION_SAMPLER, generator=generator)
        values = torch.tensor([float(output[name]) for name in names], dtype=torch.float64, device=totals.device)
        measured = ~values.isnan()
        totals[0] += torch.where(measured, values, 0.0)
        totals[1] += measured
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    if totals[1, 0] == 0:
        raise ValueError("The evaluation set has no batch of two or more clips; pretraining evaluation needs pairs.")
    return {name: float(totals[0, i] / totals[1, i]) if totals[1, i] else float("nan") for i, name in enumerate(names)}


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    model_args, data_args, args = parse_pretraining_arguments(argv)
    accelerator = build_accelerator(args)
    fingerprint = run_fingerprint(model_args, data_args, args)
    set_seed(args.seed)
    if model_args.model_name_or_path:  # continue pretraining a saved model
        model = PemtForPreTraining.from_pretrained(model_args.model_name_or_path)
        processor = PemtProcessor.from_pretrained(model_args.model_name_or_path)
    else:
        config = load_model_config(model_args)  # a bad config fails here, before the output folder is touched
        processor = PemtProcessor.from_model_config(config)
    prepare_output_dir(accelerator, args, fingerprint)
    data = setup_data(
        data_args, args.output_dir, processor, accelerator, args.seed, args.per_device_train_batch_size,
        args.dataloader_num_workers, args.num_train_epochs,
    )
    if not model_args.model_name_or_path:
        model = PemtForPreTraining(config)

    def without_labels(rows):
        batch = data.to_batch(rows)
        batch.pop("labels")
        return batch

    evaluate = evaluation_callback(data, args.per_device_eval_batch_size, evaluate_pretraining)
    loop = TrainingLoop(
        accelerator, model, args, data.train, collate_fn=data.collate_fn, fingerprint=fingerprint,
        metric_names=PRETRAINING_METRICS, prepare_batch=without_labels, evaluate=evaluate,
    )
    loop.train()
    final_metrics = loop.last_eval_metrics
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        final = loop.unwrapped_model()
        final.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        plot = plot_history(output_dir / HISTORY_FILE, output_dir / "pretraining.png", "PEMT pretraining")
        if final_metrics is not None:
            (output_dir / "eval_results.json").write_text(json.dumps(final_metrics, indent=2) + "\n")
        accelerator.print(f"Pretrained model and processor: {output_dir}\nPlot: {plot}")
        if args.push_to_hub:
            final.push_to_hub(args.hub_model_id, private=args.hub_private_repo)
            processor.push_to_hub(args.hub_model_id, private=args.hub_private_repo)
            accelerator.print(f"Pushed to {args.hub_model_id}")
    finish_output_dir(accelerator, args, fingerprint)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_metrics


if __name__ == "__main__":
    from ..cli import module_main

    module_main("pretrain")
