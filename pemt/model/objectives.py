"""The pretraining objectives as plain functions: audio swapping for correct pair prediction (CPP), segment masking,
negative sampling, masked embedding prediction (MEP). [`PemtForPreTraining`] composes them.

Every function that draws random numbers takes an optional `generator`, so that an evaluation can draw the same masks,
swaps and negatives for every model it compares.

Segments are identified by their *source*: the clip whose content they hold and their index in it. After a swap the
same audio segment sits in two rows of the batch (the donor's own and the swapped clip's); negative sampling excludes
every candidate with the anchor's source, so that no negative is a copy of the positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration_pemt import NEGATIVE_SAMPLING_VARIANTS



def swap_audio(
    audio: torch.Tensor, audio_segment_mask: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""
    Correct pair prediction's input: about half of the clips get another clip's audio.

    A clip only ever receives audio from a clip with the same `audio_segment_mask` (the same real segments), so that the mask
    the model sees cannot tell a swapped pair from a real one. Within each group of equal masks the donors are a random
    cyclic shift (never 0) of the group. A clip alone in its group cannot be swapped and is not `eligible` for the CPP
    loss: counting it as a real pair would let the model learn that unusual lengths are always real.

    Returns:
        The audio embeddings `[batch, T, D]` after the swap; `swapped` (bool `[batch]`); `source` (long `[batch]`, the
        clip whose audio each row now holds); `eligible` (bool `[batch]`, clips that had a possible donor).
    """
    batch = audio.shape[0]
    device = audio.device
    source = torch.arange(batch, device=device)
    eligible = torch.zeros(batch, dtype=torch.bool, device=device)
    groups = torch.unique(audio_segment_mask.long(), dim=0, return_inverse=True)[1]
    for group in range(int(groups.max()) + 1):
        members = (groups == group).nonzero().flatten()
        if members.numel() < 2:
            continue
        shift = int(torch.randint(1, members.numel(), (1,), generator=generator, device="cpu"))
        source[members] = members.roll(-shift)
        eligible[members] = True
    swapped = (torch.rand(batch, generator=generator, device="cpu").to(device) < 0.5) & eligible
    source = torch.where(swapped, source, torch.arange(batch, device=device))
    return audio[source], swapped, source, eligible


def mask_segments(
    embeddings: torch.Tensor,
    real: torch.Tensor,
    mask_embedding: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    BERT-style corruption of CNN embeddings `[batch, T, D]`: of a clip's `n` real segments exactly
    `floor(probability * n + u)` are masked, `u ~ U(0, 1)` per clip (stochastic rounding), so the expected masked
    fraction is `probability` at any `T` (at `T = 4` and 0.15: no segment 40% of the time, one 60%). Masked segments get
    the learned `mask_embedding` (80%), another real segment's embedding (10%) or stay unchanged (10%).

    Returns:
        The corrupted copy and the boolean masked positions `[batch, T]` (a batch may have none).
    """
    real = real.bool()
    shape, device = real.shape, embeddings.device

    def uniform(size) -> torch.Tensor:
        return torch.rand(size, generator=generator, device="cpu").to(device)

    counts = torch.floor(probability * real.sum(dim=1) + uniform(shape[0])).long()
    # The `counts[b]` real segments with the lowest random scores are masked: a uniformly random subset of that size.
    scores = uniform(shape).masked_fill(~real, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    positions = (ranks < counts[:, None]) & real
    choice = uniform(shape)
    use_mask_vector = positions & (choice < 0.8)
    use_random = positions & (choice >= 0.8) & (choice < 0.9)
    flat_real = embeddings[real]
    pick = torch.randint(flat_real.shape[0], shape, generator=generator, device="cpu").to(device)
    corrupted = torch.where(use_mask_vector[..., None], mask_embedding.to(embeddings.dtype), embeddings)
    corrupted = torch.where(use_random[..., None], flat_real[pick], corrupted)
    return corrupted, positions


def sample_negatives(
    anchors: torch.Tensor,
    pool: torch.Tensor,
    anchor_ids: torch.Tensor,
    pool_ids: torch.Tensor,
    num_negatives: int,
    variant: str,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""
    Draws `num_negatives` indices into `pool` for each anchor (a masked segment's true CNN embedding).

    `anchor_ids` `[N, 2]` and `pool_ids` `[P, 2]` give each embedding's source as (clip, segment index). A candidate
    with the anchor's source holds the anchor's own content (itself, or its copy in a swapped clip) and is never drawn.

    Variants (the paper's ablation):
    - `"uniform"`: every other segment of the batch equally likely;
    - `"sequence"`: only other segments of the anchor's own source clip (uniformly); where a clip has no other real
      segment, the batch is used as in `"uniform"`;
    - `"similar"` / `"dissimilar"`: `softmax(±cos(anchor, candidate) / temperature)` over the batch, hard negatives first
      (the paper's choice) or easy ones first. Embeddings are compared without gradient: sampling chooses the contrast,
      the loss trains the CNNs.

    Without enough allowed candidates the draw repeats indices.

    Returns:
        `torch.LongTensor` of shape `(num_anchors, num_negatives)`.
    """
    if variant not in NEGATIVE_SAMPLING_VARIANTS:
        raise ValueError(f"negative sampling {variant!r}; choose one of {', '.join(NEGATIVE_SAMPLING_VARIANTS)}.")
    with torch.no_grad():
        same_clip = anchor_ids[:, None, 0] == pool_ids[None, :, 0]
        same_source = same_clip & (anchor_ids[:, None, 1] == pool_ids[None, :, 1])
        allowed = ~same_source
        if not allowed.any(dim=1).all():
            raise ValueError("Negative sampling needs at least two distinct real segments of a modality in the batch.")
        if variant == "sequence":
            in_sequence = same_clip & allowed
            allowed = torch.where(in_sequence.any(dim=1, keepdim=True), in_sequence, allowed)
        if variant in ("similar", "dissimilar"):
            sign = 1.0 if variant == "similar" else -1.0
            # Pooled post-ReLU features share a large positive common component that makes every cosine near 1;
            # centring on the pool's mean leaves the part that tells segments apart.
            centre = pool.float().mean(dim=0)
            cosine = F.normalize(anchors.float() - centre, dim=-1) @ F.normalize(pool.float() - centre, dim=-1).T
            logits = sign * cosine / temperature
        else:
            logits = torch.zeros(allowed.shape, device=pool.device)
        probabilities = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        enough = int(allowed.sum(dim=1).min()) >= num_negatives
        drawn = torch.multinomial(probabilities.cpu(), num_negatives, replacement=not enough, generator=generator)
        return drawn.to(pool.device)


def segment_ids(real: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
    """(source clip, segment index) `[batch, T, 2]` of every segment; `source[b]` is the clip whose content row `b`
    holds (default: its own)."""
    batch, length = real.shape
    clips = source if source is not None else torch.arange(batch, device=real.device)
    return torch.stack(
        [clips[:, None].expand(batch, length), torch.arange(length, device=real.device)[None].expand(batch, length)], dim=-1
    )


def mep_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    real: torch.Tensor,
    positions: torch.Tensor,
    ids: torch.Tensor,
    num_negatives: int,
    sampling: str,
    sampling_temperature: float,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Masked embedding prediction: InfoNCE at the masked `positions`, where `head(hidden, candidates)` must score the
    true CNN embedding (candidate 0) above `num_negatives` negatives drawn by [`sample_negatives`] from the batch's real
    segments (`ids` from [`segment_ids`] tell copies apart from distinct segments).

    Returns:
        The loss (0, still attached to the graph, when nothing is masked) and a boolean hit per masked segment: the true
        embedding scored strictly above every negative (a tie is a miss).
    """
    real = real.bool()
    if not positions.any():
        # Nothing masked (stochastic rounding can mask no segment of a small batch): a zero loss that still runs the
        # head, so that every parameter gets a gradient, as data-parallel training requires.
        zero = head(hidden[:, 0], targets[:, :1]).sum() * 0.0
        return zero, torch.zeros(0, dtype=torch.bool, device=hidden.device)
    anchors = targets[positions]
    pool = targets[real]
    negatives = sample_negatives(
        anchors, pool, ids[positions], ids[real], num_negatives, sampling, sampling_temperature, generator
    )
    candidates = torch.cat([anchors[:, None], pool[negatives]], dim=1)
    scores = head(hidden[positions], candidates) / temperature
    loss = F.cross_entropy(scores.float(), torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
    hits = scores[:, 0] > scores[:, 1:].max(dim=1).values
    return loss, hits


def cpp_loss(logits: torch.Tensor, swapped: torch.Tensor, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct pair prediction: binary cross-entropy of `logits` (audio belongs to the video) over the `eligible`
    clips. Returns the loss (0 when no clip is eligible) and a boolean hit per eligible clip."""
    labels = (~swapped).to(logits.dtype)
    if not eligible.any():
        return logits.sum() * 0.0, torch.zeros(0, dtype=torch.bool, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits[eligible], labels[eligible])
    return loss, ((logits > 0) == ~swapped)[eligible]
