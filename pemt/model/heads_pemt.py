"""The authors' per-segment classification head, as plain functions the classifier calls.

The released AVBERT fine-tuning code scores every segment twice: once from the multimodal Transformer, with the
summary (BOS) output of each modality beside that segment's output (`[BOS_v; h_t^v]`, `[BOS_a; h_t^a]`, each
projected without bias, summed, LayerNorm, linear), and once from the segment's concatenated CNN embeddings (linear).
Training sums the two per-segment cross-entropies with the clip's label repeated on every segment; testing averages
the softmaxes of both heads over the segments (and views). Here `logits` is the log of that average, so that
`logits.softmax(-1)` gives it back and everything downstream of `logits` (pipeline, evaluation) reports the
authors' scores.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["segment_pairs", "segment_mask", "mean_segment_probabilities", "probabilities_to_logits", "repeat_per_segment"]

# The smallest probability turned into a logit: keeps `log` finite for a class no segment gave any mass to.
_TINY = 1e-30


def segment_pairs(sequence: torch.Tensor) -> torch.Tensor:
    """`[summary, segment_1, ..., segment_T]` `[batch, 1 + T, H]` -> `[batch, T, 2H]`: the summary output beside
    each segment's output."""
    segments = sequence[:, 1:]
    return torch.cat([sequence[:, :1].expand_as(segments), segments], dim=-1)


def segment_mask(masks: list[torch.Tensor | None], batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Boolean `[batch, T]`: a segment counts when any modality used has it (a clip without audio still has its
    visual segments)."""
    given = [m.bool() for m in masks if m is not None]
    if not given:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    mask = given[0]
    for other in given[1:]:
        mask = mask | other
    return mask


def mean_segment_probabilities(
    segment_logits: list[torch.Tensor], mask: torch.Tensor, multi_label: bool
) -> torch.Tensor:
    """Mean over real segments and over the heads of each head's softmax (sigmoid when multi-label).

    Args:
        segment_logits: one `[batch, T, num_labels]` tensor per head.
        mask: boolean `[batch, T]`, True at real segments.

    Returns:
        `[batch, num_labels]` probabilities (float32).
    """
    weights = mask.to(torch.float32).unsqueeze(-1)
    total = 0
    for logits in segment_logits:
        probabilities = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
        total = total + (probabilities * weights).sum(dim=1)
    return total / (weights.sum(dim=1).clamp(min=1.0) * len(segment_logits))


def probabilities_to_logits(probabilities: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Inverse of softmax (log, up to a constant softmax ignores) or of sigmoid (logit), so that the classifier's
    `probabilities(logits)` returns `probabilities`."""
    clamped = probabilities.clamp(min=_TINY)
    if multi_label:
        return clamped.log() - (1.0 - probabilities).clamp(min=_TINY).log()
    return clamped.log()


def repeat_per_segment(labels: torch.Tensor, length: int) -> torch.Tensor:
    """Clip labels (`[batch]` indices or `[batch, num_labels]` targets) repeated on each of `length` segments:
    `[batch, length]` or `[batch, length, num_labels]`."""
    return labels.unsqueeze(1).expand(labels.shape[0], length, *labels.shape[1:])


def multi_margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The authors' ESC-50 linear-evaluation loss: `torch.nn.MultiMarginLoss` with their margin."""
    return nn.functional.multi_margin_loss(logits, labels.view(-1).long(), margin=margin)
