"""The pretraining objectives as plain functions: segment masking, content-aware negative sampling, masked
embedding prediction (MEP) and correct pair prediction (CPP). [`PemtForPreTraining`] composes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_negatives(
    anchors: torch.Tensor, pool: torch.Tensor, anchor_positions: torch.Tensor, num_negatives: int, variant: str,
    temperature: float,
) -> torch.Tensor:
    r"""
    Content-aware negative sampling: for each anchor (a masked segment's true CNN embedding), draws `num_negatives`
    indices into `pool` (all real segments of the batch, same modality), never the anchor itself.

    The draw follows `softmax(s * cos(anchor, candidate) / temperature)` with `s = +1` for `"similar"` (hard negatives
    first, the paper's choice), `s = -1` for `"dissimilar"`, and equal weights for `"uniform"`. Embeddings are
    compared without gradient: sampling chooses the contrast, the loss trains the CNNs. Without enough candidates the
    draw repeats indices.

    Returns:
        `torch.LongTensor` of shape `(num_anchors, num_negatives)`.
    """
    if pool.shape[0] < 2:
        raise ValueError("Negative sampling needs at least two real segments of a modality in the batch.")
    with torch.no_grad():
        if variant == "uniform":
            logits = anchors.new_zeros(anchors.shape[0], pool.shape[0], dtype=torch.float32)
        else:
            sign = 1.0 if variant == "similar" else -1.0
            # Pooled post-ReLU features share a large positive common component that makes every cosine near 1;
            # centring on the pool's mean leaves the part that tells segments apart.
            centre = pool.float().mean(dim=0)
            cosine = F.normalize(anchors.float() - centre, dim=-1) @ F.normalize(pool.float() - centre, dim=-1).T
            logits = sign * cosine / temperature
        logits[torch.arange(anchors.shape[0], device=anchors.device), anchor_positions] = float("-inf")
        probabilities = logits.softmax(dim=-1)
        return torch.multinomial(probabilities, num_negatives, replacement=pool.shape[0] - 1 < num_negatives)


def swap_audio(audio: torch.Tensor, audio_segment_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correct pair prediction's input: about half of the clips get another clip's audio (a random cyclic shift of
    the batch, never 0). Returns the audio embeddings, their mask, and the boolean `swapped` per clip."""
    batch = audio.shape[0]
    swapped = torch.rand(batch, device=audio.device) < 0.5
    donor = (torch.arange(batch, device=audio.device) + torch.randint(1, batch, (1,), device=audio.device)) % batch
    audio = torch.where(swapped[:, None, None], audio[donor], audio)
    audio_segment_mask = torch.where(swapped[:, None], audio_segment_mask[donor], audio_segment_mask)
    return audio, audio_segment_mask, swapped


def mask_segments(
    embeddings: torch.Tensor, real: torch.Tensor, mask_embedding: torch.Tensor, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption of CNN embeddings `[batch, T, D]` at about `probability` of the real segments (80% the
    learned `mask_embedding`, 10% another segment's embedding, 10% unchanged). Returns the corrupted copy and the
    boolean masked positions `[batch, T]`."""
    real = real.bool()
    scores = torch.rand(real.shape, device=embeddings.device).masked_fill(~real, 2.0)
    positions = (scores < probability) & real
    # Short clips would often get no masked segment at 15%; every clip with a real segment masks at least one.
    lowest = scores.argmin(dim=1, keepdim=True)
    positions.scatter_(1, lowest, real.gather(1, lowest))
    choice = torch.rand(real.shape, device=embeddings.device)
    use_mask_vector = positions & (choice < 0.8)
    use_random = positions & (choice >= 0.8) & (choice < 0.9)
    flat_real = embeddings[real]
    random_pick = flat_real[torch.randint(flat_real.shape[0], real.shape, device=embeddings.device)]
    corrupted = torch.where(use_mask_vector[..., None], mask_embedding.to(embeddings.dtype), embeddings)
    corrupted = torch.where(use_random[..., None], random_pick, corrupted)
    return corrupted, positions


def mep_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    real: torch.Tensor,
    positions: torch.Tensor,
    num_negatives: int,
    sampling: str,
    sampling_temperature: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked embedding prediction: InfoNCE at the masked `positions`, where `head(hidden, candidates)` must score the
    true CNN embedding (candidate 0) above `num_negatives` negatives drawn by [`sample_negatives`]. Returns the loss
    and a boolean hit per masked segment."""
    real = real.bool()
    pool = targets[real]
    # Index of each real segment in `pool`, so that a masked segment can be excluded from its own negatives.
    pool_index = (real.flatten().cumsum(0) - 1).view(real.shape)
    anchor_positions = pool_index[positions]
    anchors = targets[positions]
    negatives = sample_negatives(anchors, pool, anchor_positions, num_negatives, sampling, sampling_temperature)
    candidates = torch.cat([anchors[:, None], pool[negatives]], dim=1)
    scores = head(hidden[positions], candidates) / temperature
    loss = F.cross_entropy(scores.float(), torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
    return loss, scores.argmax(dim=-1) == 0
