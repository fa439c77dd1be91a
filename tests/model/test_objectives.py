"""The pretraining objectives (pemt/model/objectives.py) as PemtForPreTraining uses them: no negative is a copy of its
anchor, ties are misses, the masked fraction is the configured one, objectives switch and weigh as configured, and a
swap cannot be read off the masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pemt import PemtConfig, PemtForPreTraining
from pemt.model.objectives import mask_segments, sample_negatives, swap_audio

MEP_HEADS = ("visual", "audio", "multimodal_visual", "multimodal_audio")


def tiny_model(**overrides) -> PemtForPreTraining:
    torch.manual_seed(0)
    return PemtForPreTraining(PemtConfig.from_preset("tiny", **overrides))


def random_batch(config: PemtConfig, batch: int, segments: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    t = segments or config.num_segments
    g = torch.Generator().manual_seed(seed)
    side = config.train_crop_size
    return {
        "pixel_values": torch.randn(batch, t, 3, config.frames_per_segment, side, side, generator=g),
        "audio_values": torch.randn(batch, t, 1, config.num_mel_bins, config.audio_frames, generator=g),
        "visual_segment_mask": torch.ones(batch, t, dtype=torch.long),
        "audio_segment_mask": torch.ones(batch, t, dtype=torch.long),
    }


class CopyDetectingHead(nn.Module):
    """Stands in for an MEP head: scores each candidate by minus its L1 distance to the positive (candidate 0), so a
    copy of the positive ties with it, and records how many negatives were exact copies."""

    def __init__(self):
        super().__init__()
        self.anchors = 0
        self.anchors_with_copy = 0

    def forward(self, outputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        distance = (candidates - candidates[:, :1]).abs().sum(-1)
        self.anchors += candidates.shape[0]
        self.anchors_with_copy += int((distance[:, 1:] == 0).any(dim=1).sum())
        return -distance


class ScoreRecorder(nn.Module):
    """Wraps an MEP head and keeps the scores it returned."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.scores: list[torch.Tensor] = []

    def forward(self, outputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        scores = self.head(outputs, candidates)
        self.scores.append(scores)
        return scores


@pytest.mark.parametrize("sampling", ["uniform", "similar"])
def test_audio_negatives_are_never_copies_of_the_anchor(sampling):
    # Batch 16, 4 negatives: the setting in which 50% of audio anchors had a copy of themselves in the pool.
    model = tiny_model(negative_sampling=sampling, negative_sampling_temperature=0.1, mep_num_negatives=4,
                       mask_probability=0.5)
    heads = {name: CopyDetectingHead() for name in MEP_HEADS}
    model.mep_heads = nn.ModuleDict(heads)
    swaps = 0
    with torch.no_grad():
        for step in range(10):
            out = model(**random_batch(model.config, 16, seed=step))
            swaps += int((out.cpp_labels == 0).sum())
    assert swaps > 30, "the test needs swapped clips, whose audio sits in two rows of the batch"
    for name, head in heads.items():
        assert head.anchors > 100, name
        assert head.anchors_with_copy == 0, f"{name}: {head.anchors_with_copy} of {head.anchors} anchors drew a copy"


def test_copy_detection_sees_copies_when_the_pool_holds_them():
    # Negative control for the test above: an anchor whose identity is not recorded (two rows claim different
    # sources but hold the same content) does draw its copy, and the copy-detecting head counts it.
    pool = torch.randn(2, 8).repeat(2, 1)  # rows 0/2 and 1/3 are copies
    ids = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0]])
    torch.manual_seed(0)
    drawn = sample_negatives(pool[:1], pool, ids[:1], ids, num_negatives=3, variant="uniform", temperature=1.0)
    head = CopyDetectingHead()
    head(None, torch.cat([pool[:1, None], pool[drawn]], dim=1))
    assert head.anchors_with_copy == 1


def test_mep_accuracy_counts_ties_as_misses():
    model = tiny_model()

    class Constant(nn.Module):
        def forward(self, outputs, candidates):
            return candidates.new_zeros(candidates.shape[:2])

    model.mep_heads = nn.ModuleDict({name: Constant() for name in MEP_HEADS})
    with torch.no_grad():
        out = model(**random_batch(model.config, 8))
    assert float(out.mep_accuracy) == 0.0


@pytest.mark.parametrize("segments", [3, 4, 10])
def test_masked_fraction_is_the_configured_probability(segments):
    torch.manual_seed(0)
    real = torch.ones(64, segments, dtype=torch.long)
    real[:16, segments - 1 :] = 0  # padded clips: only real segments count
    embeddings = torch.randn(64, segments, 5)
    counts, masked = [], 0
    for _ in range(100):
        _, positions = mask_segments(embeddings, real, torch.zeros(5), 0.15)
        assert not (positions & ~real.bool()).any()
        masked += int(positions.sum())
        counts.append(positions.sum(dim=1))
    fraction = masked / (100 * int(real.sum()))
    # ~17,000+ real segments: the binomial standard deviation of the fraction is below 0.003.
    assert abs(fraction - 0.15) < 0.012, fraction
    # Stochastic rounding: each clip masks floor or ceil of 0.15 x its real segments.
    per_clip = torch.stack(counts).float()
    expected = 0.15 * real.sum(dim=1).float()
    assert ((per_clip == expected.floor()) | (per_clip == expected.ceil())).all()


def test_objective_weights_and_full_weight_multimodal_mep():
    model = tiny_model(visual_mep_weight=2.0, audio_mep_weight=1.0, multimodal_mep_weight=1.0, cpp_weight=0.5,
                       mask_probability=0.5)
    recorders = {name: ScoreRecorder(model.mep_heads[name]) for name in MEP_HEADS}
    model.mep_heads = nn.ModuleDict(recorders)
    torch.manual_seed(1)
    out = model(**random_batch(model.config, 6))

    def infonce(name: str) -> torch.Tensor:
        (scores,) = recorders[name].scores
        scores = scores / model.config.mep_temperature
        return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long))

    torch.testing.assert_close(out.multimodal_mep_loss, infonce("multimodal_visual") + infonce("multimodal_audio"))
    torch.testing.assert_close(out.visual_mep_loss, infonce("visual"))
    expected = 2.0 * out.visual_mep_loss + out.audio_mep_loss + out.multimodal_mep_loss + 0.5 * out.cpp_loss
    torch.testing.assert_close(out.loss, expected)


def test_switched_off_objectives_are_not_computed():
    model = tiny_model(visual_mep_weight=0.0, multimodal_mep_weight=0.0, cpp_weight=0.0, mask_probability=0.5)
    heads = {name: CopyDetectingHead() for name in MEP_HEADS}
    model.mep_heads = nn.ModuleDict(heads)
    with torch.no_grad():
        out = model(**random_batch(model.config, 8))
    assert heads["audio"].anchors > 0
    assert heads["visual"].anchors == heads["multimodal_visual"].anchors == heads["multimodal_audio"].anchors == 0
    assert bool((out.cpp_labels == 1).all()), "with correct pair prediction off no audio may be swapped"
    assert float(out.cpp_loss) == 0.0 and float(out.visual_mep_loss) == 0.0
    torch.testing.assert_close(out.loss, out.audio_mep_loss)
    with pytest.raises(ValueError, match="at least one positive"):
        PemtConfig.from_preset("tiny", visual_mep_weight=0, audio_mep_weight=0, multimodal_mep_weight=0, cpp_weight=0)


def test_swapped_audio_comes_from_a_clip_with_the_same_real_segments():
    model = tiny_model()
    batch = random_batch(model.config, 9)
    # Clips 0-3 have 2 real segments, 4-7 have 3, clip 8 has 1 (no partner: never swapped).
    for mask in (batch["visual_segment_mask"], batch["audio_segment_mask"]):
        mask[:4, 2:] = 0
        mask[8, 1:] = 0
    seen = []
    backbone_forward = model.pemt.forward

    def recording_forward(*args, **kwargs):
        seen.append(kwargs["audio_segment_mask"].clone())
        return backbone_forward(*args, **kwargs)

    model.pemt.forward = recording_forward
    swapped = torch.zeros(9)
    with torch.no_grad():
        for seed in range(20):
            torch.manual_seed(seed)
            out = model(**batch)
            swapped += (out.cpp_labels == 0).float()
            assert torch.equal(seen[-1], batch["visual_segment_mask"]), "the audio mask the model sees reveals a swap"
    assert swapped[:8].min() > 0 and swapped[8] == 0


def test_swap_audio_sources_and_eligibility():
    audio = torch.arange(6.0)[:, None, None].expand(6, 3, 2)
    mask = torch.ones(6, 3, dtype=torch.long)
    mask[5, 2] = 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        swapped_audio, swapped, source, eligible = swap_audio(audio, mask, generator)
        assert eligible.tolist() == [True] * 5 + [False]
        assert torch.equal(swapped_audio[:, 0, 0], source.float())
        assert torch.equal(source != torch.arange(6), swapped)
        assert (source[:5] < 5).all() and source[5] == 5
