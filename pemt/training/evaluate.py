"""Evaluation of a fine-tuned classifier: `pemt evaluate --model DIR --eval_dir ...`.

Clips are read from their files so that each can be seen through several temporal views; class probabilities are
averaged over the views (softmax for single-label, sigmoid for multi-label models).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import torch

from ..data.loading import align_labels
from ..model.media_pemt import MediaDecodeError
from ..model.modeling_pemt import PemtForAudioVisualClassification
from ..model.processing_pemt import PemtProcessor
from ..errors import PemtUsageError
from .arguments import EvaluationArguments, parse_arguments
from .data_setup import DataArguments
from ..model.weights_check_pemt import require_trained_heads
from .metrics import confusion_matrix, mean_average_precision, plot_confusion_matrix, top_k_accuracy

logger = logging.getLogger(__name__)

@torch.no_grad()
def predict(
    model: PemtForAudioVisualClassification,
    processor: PemtProcessor,
    videos: list,
    num_temporal_views: int = 1,
    batch_size: int = 4,
    num_spatial_crops: int = 1,
) -> tuple[torch.Tensor, list[int], list[dict[str, str]]]:
    """Class probabilities of readable `videos` (averaged over `num_temporal_views x num_spatial_crops` views);
    returns them, the indices they belong to, and the skipped files."""
    model.eval()
    device = next(model.parameters()).device
    scores, kept, skipped = [], [], []
    for start in range(0, len(videos), batch_size):
        chunk = list(range(start, min(start + batch_size, len(videos))))
        readable = []
        for index in chunk:
            try:
                features = processor(
                    videos=videos[index], num_temporal_views=num_temporal_views, num_spatial_crops=num_spatial_crops
                )
                readable.append((index, features))
            except MediaDecodeError as err:
                skipped.append({"source": str(videos[index]), "error": str(err)})
        if not readable:
            continue
        batch = {key: torch.cat([features[key] for _, features in readable]) for key in readable[0][1]}
        logits = model(**{k: v.to(device) for k, v in model.select_inputs(batch).items()}).logits
        scores.append(model.probabilities(logits, num_temporal_views * num_spatial_crops))
        kept.extend(index for index, _ in readable)
    if skipped:
        logger.warning("Skipped %d unreadable clip(s): %s", len(skipped), "; ".join(s["error"] for s in skipped))
    if not scores:
        raise ValueError("No evaluation clip could be read.")
    return torch.cat(scores), kept, skipped


def compute_metrics(scores: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> dict[str, float]:
    """Top-1/top-5 accuracy for single-label classes, mean average precision for multi-hot targets."""
    if multi_label:
        return {"mAP": mean_average_precision(scores, labels)}
    return {"top1_accuracy": top_k_accuracy(scores, labels, 1), "top5_accuracy": top_k_accuracy(scores, labels, 5)}


def evaluate_model(
    model: PemtForAudioVisualClassification,
    processor: PemtProcessor,
    dataset: datasets.Dataset,
    output_dir: str | Path,
    num_temporal_views: int = 1,
    batch_size: int = 4,
    num_spatial_crops: int = 1,
    source: str = "the evaluation set",
) -> dict:
    """Runs [`predict`] over a `video`/`label` data set, writes `eval_results.json` (and, for single-label models,
    `confusion_matrix.png`) to `output_dir`, and returns the results. Labels are matched to the model's `id2label`
    by name (see [`align_labels`]); `source` names the data in errors."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    multi_label = model.config.problem_type == "multi_label_classification"
    # Class numbers of a data set are its own; names are what it shares with the model.
    dataset = align_labels(dataset, model.config.id2label, source=source)
    scores, kept, skipped = predict(
        model, processor, list(dataset["video"]), num_temporal_views, batch_size, num_spatial_crops
    )
    labels = torch.as_tensor([dataset[i]["label"] for i in kept])
    if multi_label and labels.dim() == 1:
        labels = torch.nn.functional.one_hot(labels, model.config.num_labels)
    results = {
        **compute_metrics(scores, labels, multi_label),
        "num_clips": len(kept),
        "num_temporal_views": num_temporal_views,
        "num_spatial_crops": num_spatial_crops,
        "skipped": skipped,
    }
    if not multi_label:
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        matrix = confusion_matrix(scores.argmax(dim=1), labels, len(names))
        results["confusion_matrix"] = matrix.tolist()
        results["confusion_matrix_png"] = str(plot_confusion_matrix(matrix, names, output_dir / "confusion_matrix.png"))
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def load_evaluation_set(data_args: DataArguments) -> datasets.Dataset:
    """The clips `--eval_dir`, `--eval_file` or `--dataset_name` (its evaluation split) name."""
    from .data_setup import load_eval_files, load_hub_splits, load_streamed_split

    files = load_eval_files(data_args)
    if files is not None:
        return files
    if data_args.dataset_name and data_args.streaming:  # only the named split is read, never the training split
        if not data_args.eval_split:
            raise PemtUsageError(f"--dataset_name {data_args.dataset_name} --streaming: name the split with --eval_split.")
        return load_streamed_split(data_args, data_args.eval_split)
    if data_args.dataset_name:
        train, evaluation = load_hub_splits(data_args)
        if evaluation is None:
            raise PemtUsageError(f"--dataset_name {data_args.dataset_name} has no evaluation split; name one with --eval_split.")
        return evaluation
    raise PemtUsageError("Give the evaluation clips with --eval_dir, --eval_file or --dataset_name.")


def main(argv: list[str] | None = None) -> dict:
    args, data_args = parse_arguments(
        "pemt evaluate", "Evaluate a fine-tuned PEMT classifier.", (EvaluationArguments, DataArguments), argv
    )
    looks_local = args.model.startswith((".", "/", "~")) or Path(args.model).exists() or args.model.count("/") > 1
    if looks_local and not (Path(args.model).expanduser() / "config.json").is_file():
        raise PemtUsageError(f"--model {args.model}: no config.json there; give a fine-tuned model folder or a Hub id.")
    dataset = load_evaluation_set(data_args)
    model = PemtForAudioVisualClassification.from_pretrained(args.model)
    require_trained_heads(model)
    processor = PemtProcessor.from_pretrained(args.model)
    results = evaluate_model(
        model, processor, dataset, args.output_dir or args.model, args.num_temporal_views, args.batch_size,
        args.num_spatial_crops,
        source=data_args.eval_dir or data_args.eval_file or data_args.dataset_name,
    )
    shown = {k: v for k, v in results.items() if k not in ("confusion_matrix", "skipped")}
    print(json.dumps(shown, indent=2))
    return results


if __name__ == "__main__":
    from ..cli import module_main

    module_main("evaluate")
