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
