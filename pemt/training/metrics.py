"""Classification metrics of `pemt evaluate`: top-k accuracy, mean average precision, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the `k` highest scores (`k` capped at the number of classes)."""
    k = min(k, scores.shape[1])
    hits = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean())


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the precision-recall step curve of one class: the mean of the precision at each positive, with
    tied scores ranked together (as scikit-learn's `average_precision_score`)."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, hits = scores[order], targets[order].float()
    # Precision and recall are read at the last position of each run of equal scores.
    ends = torch.cat([sorted_scores[1:] != sorted_scores[:-1], torch.tensor([True])])
    true_positives = hits.cumsum(0)[ends]
    predicted = (torch.arange(len(scores)) + 1.0)[ends]
    precision = true_positives / predicted
    recall_gain = torch.diff(true_positives, prepend=torch.zeros(1)) / hits.sum()
    return float((precision * recall_gain).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes with at least one positive of their average precision (multi-label evaluation)."""
    present = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    if not present:
        raise ValueError("mAP needs at least one positive label in the evaluation set.")
    return sum(average_precision(scores[:, c], targets[:, c]) for c in present) / len(present)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`[true, predicted]` counts."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def plot_confusion_matrix(matrix: torch.Tensor, names: list[str], output_png: str | Path) -> Path:
    size = max(4.0, 0.5 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix.numpy(), cmap="Blues")
    axis.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true", title="confusion matrix")
    axis.set_xticklabels(names, rotation=45, ha="right")
    axis.set_yticklabels(names)
    for (row, column), value in zip(((r, c) for r in range(len(names)) for c in range(len(names))), matrix.flatten().tolist()):
        axis.text(column, row, str(value), ha="center", va="center", color="black")
    figure.tight_layout()
    output_png = Path(output_png)
    figure.savefig(output_png, dpi=100)
    plt.close(figure)
    return output_png
