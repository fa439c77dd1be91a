"""The training view is cut before it is resized, and can stay uint8 until the training device normalises it.

`PemtVideoProcessor` used to resize whole frames to the drawn short side and then crop; it now cuts the square of
the frame that the crop covers and resizes only that. These tests hold the new path to the old one where the two
sample the same grid (a scale of exactly 2), and the uint8 output plus `normalize` to the float output."""

from __future__ import annotations

import pytest
import torch

from pemt.model.video_processing_pemt import PemtVideoProcessor


def noise_frames(count: int = 4, height: int = 256, width: int = 320, seed: int = 0) -> torch.Tensor:
    # Noise: any misplacement of the crop by a pixel changes nearly every value.
    return torch.randint(0, 256, (count, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_cropping_before_resizing_gives_the_values_of_resizing_before_cropping():
    # Short side 256 -> 128: every output pixel averages the same 2x2-scaled neighbourhood in both orders.
    video = PemtVideoProcessor(train_short_side_range=(128, 128), train_crop_size=56, eval_short_side=128, eval_crop_size=56)
    frames = noise_frames()
    fast = video.crop_and_resize(frames, top=40, left=60, size=112)
    reference = video.resize_short_side(frames, 128)[:, 20:76, 30:86]
    assert fast.dtype == torch.uint8 and fast.shape == reference.shape == (4, 56, 56, 3)
    difference = (fast.int() - reference.int()).abs()
    # Inside, identical; on the outermost row and column the resampling filter reaches past the square, which the
    # old order read from the neighbouring pixels and the new one cannot.
    assert difference[:, 1:-1, 1:-1].max() == 0
    assert difference.float().mean() < 1.0
    # Negative control: the crop one pixel lower differs everywhere.
    shifted = video.resize_short_side(frames, 128)[:, 21:77, 30:86]
    assert (fast.int() - shifted.int()).abs()[:, 1:-1, 1:-1].float().mean() > 10


def test_the_drawn_square_covers_what_the_drawn_short_side_would_crop():
    video = PemtVideoProcessor()  # paper: short side 128-160, crop 112
    sizes = set()
    for seed in range(200):
        top, left, size, _ = video.training_crop(160, 284, torch.Generator().manual_seed(seed))
        assert 0 <= top <= 160 - size and 0 <= left <= 284 - size
        sizes.add(size)
    # 112 * 160 / side for side in [128, 160]: from the whole short side's 140 pixels down to 112.
    assert min(sizes) == 112 and max(sizes) == 140 and len(sizes) > 15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uint8_output_normalised_later_equals_the_float_output(seed):
    video = PemtVideoProcessor()
    frames = noise_frames(count=2 * 4, height=160, width=284, seed=seed).reshape(2, 4, 160, 284, 3)
    as_float = video(frames, training=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt")["pixel_values"]
    as_uint8 = video(
        frames, training=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt", do_normalize=False
    )["pixel_values"]
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape == (2, 3, 4, 112, 112)
    mask = torch.tensor([1, 0])
    normalised = video.normalize(as_uint8, mask)
    torch.testing.assert_close(normalised[0], as_float[0], rtol=0, atol=1e-5)
    assert not normalised[1].any()  # a masked segment is zeros, as the processor gives it
    # Negative control: another draw is another crop.
    other = video(frames, training=True, generator=torch.Generator().manual_seed(seed + 10), return_tensors="pt")["pixel_values"]
    assert (other - as_float).abs().mean() > 0.1
    with pytest.raises(ValueError, match="already normalised"):
        video.normalize(as_float)


def test_mirroring_is_fused_into_the_crop_copy_with_the_same_values():
    video = PemtVideoProcessor()
    frames = noise_frames(count=3, height=160, width=284)
    fused = video.crop_and_resize(frames, top=10, left=50, size=131, flip=True)
    assert torch.equal(fused, video.crop_and_resize(frames, top=10, left=50, size=131).flip(2))
    # Also where no resize is needed (a square already of the crop's size).
    assert torch.equal(video.crop_and_resize(frames, 5, 7, 112, flip=True), frames[:, 5:117, 7:119].flip(2))
    # Negative control: the mirrored view is not the plain one.
    assert (fused.int() - video.crop_and_resize(frames, 10, 50, 131).int()).abs().float().mean() > 10


def _whole_frame_training_sample(processor, source, seed: int, shifted: bool = False):
    """The training sample as it was made before crops were cut while decoding: whole frames decoded, then the crop
    drawn on them, then SpecAugment, all from one generator in that order. `shifted` moves the crop a pixel
    sideways (a negative control)."""
    generator = torch.Generator().manual_seed(seed)
    segments, _, _ = processor.decode(source, training=True, generator=generator)
    assert segments.window is None and min(segments.frames.shape[2:4]) == 24  # whole frames, at the storage side
    top, left, size, flip = processor.video_processor.training_crop(*segments.frames.shape[2:4], generator)
    if shifted:
        left += 1 if left + size < segments.frames.shape[3] else -1
    pixels = processor.video_processor(
        torch.from_numpy(segments.frames), training=True, crop=(top, left, size, flip),
        return_tensors="pt", do_normalize=False,
    )["pixel_values"]
    audio = processor.feature_extractor(segments.waveform, training=True, generator=generator, return_tensors="pt")["audio_values"]
    return pixels, audio


@pytest.mark.parametrize("kind", ["mp4", "rotated mp4", "arrays"])
def test_a_crop_cut_while_decoding_equals_the_crop_of_whole_frames(tmp_path, kind):
    """Training with one temporal view draws its crop when the first frame is decoded and keeps only that square of
    every frame; the sample must be the one whole frames gave: same crop, same flip, same SpecAugment draws."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from media_fixtures import frame_pattern, write_media

    from pemt.model.configuration_pemt import PemtConfig
    from pemt.model.processing_pemt import PemtProcessor

    processor = PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))  # storage side 24, crop 16
    shape = (24, 30)
    if kind.endswith("mp4"):
        # Rotated: a phone's portrait clip, stored landscape; the crop is drawn on the upright picture.
        rotation = 90 if kind.startswith("rotated") else 0
        shape = (30, 24) if rotation else shape
        source = str(write_media(tmp_path / "clip.mp4", seconds=4.0, fps=10, size=(48, 60), sample_rate=8000,
                                 textured=True, rotation=rotation))
    else:
        texture = np.random.default_rng(1).integers(0, 256, (24, 30, 3), dtype=np.uint8)
        frames = np.stack([frame_pattern(i, 24, 30, texture) for i in range(40)])
        tone = np.sin(np.arange(32000) * 0.07).astype(np.float32)
        source = {"frames": frames, "video_fps": 10.0, "waveform": tone, "sampling_rate": 8000}
    flips = set()
    for seed in range(6):
        # The fast path is really taken: the decoder hands back only the drawn square.
        chosen = []
        segments, _, _ = processor.decode(
            source, training=True, generator=torch.Generator().manual_seed(seed),
            window=lambda h, w: chosen.append((h, w)) or (1, 2, 20),
        )
        assert chosen == [shape] and segments.window == (1, 2, 20) and segments.frames.shape[2:4] == (20, 20)

        windows = []
        decode = processor.decode

        def spy(*args, **kwargs):
            decoded = decode(*args, **kwargs)
            windows.append(decoded[0].window)
            return decoded

        processor.decode = spy
        sample = processor(videos=source, training=True, generator=torch.Generator().manual_seed(seed), do_normalize=False)
        del processor.decode
        assert windows[0] is not None  # the processor took the square while decoding
        pixels, audio = _whole_frame_training_sample(processor, source, seed)
        assert torch.equal(sample["pixel_values"][0], pixels) and torch.equal(sample["audio_values"][0], audio)
        flips.add(processor.video_processor.training_crop(*shape, torch.Generator().manual_seed(seed))[3])
        # Negative control: the crop one pixel to the side is another sample.
        shifted, _ = _whole_frame_training_sample(processor, source, seed, shifted=True)
        assert not torch.equal(sample["pixel_values"][0], shifted)
    # Seeds cover both mirrored and plain views: the flip travels with the crop drawn while decoding.
    assert flips == {True, False}
