"""Resizing, cropping and normalisation of PEMT's visual segments."""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
import torch
from transformers import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin

from .configuration_pemt import PemtConfig

__all__ = ["PemtVideoProcessor", "zero_masked_segments"]


def zero_masked_segments(values: torch.Tensor, segment_mask: torch.Tensor | None) -> torch.Tensor:
    """Sets, in place, the segments of `values` (`[*segment_mask.shape, ...]`) whose `segment_mask` is 0 to zeros, and
    returns `values`. Segment by segment: a boolean-mask assignment costs ~5 ms on a paper-size clip even when it
    selects nothing, and usually nothing is masked."""
    if segment_mask is not None:
        for index in torch.nonzero(segment_mask == 0).tolist():
            values[tuple(index)] = 0
    return values


class PemtVideoKwargs(TypedDict, total=False):
    frames_per_segment: int
    frame_stride: int
    video_fps: float
    train_short_side_range: list[int]
    train_crop_size: int
    eval_short_side: int
    eval_crop_size: int
    image_mean: float
    image_std: float
    horizontal_flip: bool


class PemtVideoProcessor(VideoProcessorMixin):
    r"""
    Turns the RGB frames of PEMT segments into model input. Training (the authors' augmentation): the short side is
    resized to a length drawn uniformly from `train_short_side_range`, a random `train_crop_size` square is cut and,
    with `horizontal_flip`, the frames are mirrored with probability 1/2 (computed crop first: the square of the
    frame that the crop covers is cut, then resized; see [`training_crop`]); one draw serves every frame of every
    segment of the clip, so that the segments the Transformers compare show the same view. Evaluation: the short
    side is resized to `eval_short_side`, then the centre `eval_crop_size` square is cut, or, for spatial test views,
    one of `num_spatial_crops` squares spread along the long side (3: left, centre, right, or top, centre, bottom).
    Values are scaled to [0, 1] and normalised with `image_mean` / `image_std`.

    Resizing is bilinear with antialiasing (`torch.nn.functional.interpolate`), run on uint8 frames at once for
    all frames of a segment: the uint8 path of PyTorch is several times faster than float on CPU and rounds to
    the same 8-bit values a stored frame would hold.

    The frame-sampling numbers (`frames_per_segment`, `frame_stride`, `video_fps`) live here too, as they do in
    `transformers` video processors; [`PemtProcessor`] reads them when it decodes.

    Args:
        frames_per_segment (`int`, *optional*, defaults to 32): frames per segment.
        frame_stride (`int`, *optional*, defaults to 2): every `frame_stride`-th frame at `video_fps` is taken.
        video_fps (`float`, *optional*, defaults to 30.0): rate the video is resampled to.
        train_short_side_range (`list[int]`, *optional*, defaults to `[128, 160]`): training short-side range.
        train_crop_size (`int`, *optional*, defaults to 112): training crop side.
        eval_short_side (`int`, *optional*, defaults to 128): evaluation short side.
        eval_crop_size (`int`, *optional*, defaults to 128): evaluation crop side.
        image_mean (`float`, *optional*, defaults to 0.45): mean subtracted from every channel.
        image_std (`float`, *optional*, defaults to 0.225): standard deviation every channel is divided by.
        horizontal_flip (`bool`, *optional*, defaults to `True`): training mirrors a clip with probability 1/2.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = PemtVideoKwargs

    def __init__(
        self,
        frames_per_segment: int = 32,
        frame_stride: int = 2,
        video_fps: float = 30.0,
        train_short_side_range: list[int] | tuple[int, int] = (128, 160),
        train_crop_size: int = 112,
        eval_short_side: int = 128,
        eval_crop_size: int = 128,
        image_mean: float = 0.45,
        image_std: float = 0.225,
        horizontal_flip: bool = True,
        **kwargs,
    ):
        kwargs.pop("video_processor_type", None)
        super().__init__(**kwargs)
        self.frames_per_segment = frames_per_segment
        self.frame_stride = frame_stride
        self.video_fps = float(video_fps)
        self.train_short_side_range = [int(s) for s in train_short_side_range]
        self.train_crop_size = train_crop_size
        self.eval_short_side = eval_short_side
        self.eval_crop_size = eval_crop_size
        self.image_mean = image_mean
        self.image_std = image_std
        self.horizontal_flip = horizontal_flip
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Raises `ValueError` for sizes that cannot produce the square crops the model reads."""
        for name in ("frames_per_segment", "frame_stride", "video_fps", "train_crop_size", "eval_short_side", "eval_crop_size", "image_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number; got {value!r}.")
        low_high = self.train_short_side_range
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ValueError(f"train_short_side_range must be [low, high] with 0 < low <= high; got {low_high}.")
        if self.train_crop_size > low_high[0]:
            raise ValueError(
                f"train_crop_size ({self.train_crop_size}) is larger than the shortest training short side "
                f"({low_high[0]}); a crop cannot exceed the frame it is cut from."
            )
        if self.eval_crop_size > self.eval_short_side:
            raise ValueError(
                f"eval_crop_size ({self.eval_crop_size}) is larger than eval_short_side ({self.eval_short_side}); a crop "
                "cannot exceed the frame it is cut from."
            )

    @classmethod
    def from_model_config(cls, config: PemtConfig) -> PemtVideoProcessor:
        """Builds the processor from a model config's visual fields."""
        return cls(
            frames_per_segment=config.frames_per_segment,
            frame_stride=config.frame_stride,
            video_fps=config.video_fps,
            train_short_side_range=list(config.train_short_side_range),
            train_crop_size=config.train_crop_size,
            eval_short_side=config.eval_short_side,
            eval_crop_size=config.eval_crop_size,
            image_mean=config.image_mean,
            image_std=config.image_std,
        )

    def storage_side(self, training: bool) -> int:
        """Side of the square frames [`shrink`] keeps: large enough for every crop the mode can take."""
        return max(self.train_short_side_range) if training else self.eval_short_side

    @staticmethod
    def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
        """Resizes `[N, H, W, 3]` frames so that the short side is `size` (aspect ratio kept)."""
        height, width = frames.shape[1:3]
        if min(height, width) == size:
            return frames
        scale = size / min(height, width)
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        images = frames.permute(0, 3, 1, 2)  # a channels-last view, which the fast uint8 kernel expects
        if images.dtype != torch.uint8:
            images = images.float()
        resized = torch.nn.functional.interpolate(images, size=new_size, mode="bilinear", antialias=True, align_corners=False)
        return resized.permute(0, 2, 3, 1)

    @staticmethod
    def crop(frames: torch.Tensor, size: int, top: int, left: int) -> torch.Tensor:
        return frames[:, top : top + size, left : left + size]

    def _center_crop(self, frames: torch.Tensor, size: int) -> torch.Tensor:
        height, width = frames.shape[1:3]
        return self.crop(frames, size, (height - size) // 2, (width - size) // 2)

    def shrink(self, frames: torch.Tensor | np.ndarray, training: bool) -> torch.Tensor:
        """Frames `[..., H, W, 3]` reduced to centre squares of [`storage_side`], still uint8: what a preprocessed
        data set stores so that this processor's crops can be taken later without the video file."""
        frames = torch.as_tensor(frames)
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        side = self.storage_side(training)
        out = self._center_crop(self.resize_short_side(flat, side), side)
        return out.reshape(*lead, side, side, 3)

    def _normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """`[F, h, w, 3]` → `[3, F, h, w]` float, scaled and normalised."""
        # Integer frames are 0-255 whatever their dtype: `datasets`' torch format hands uint8 arrays back as int64.
        scale = 1.0 if frames.is_floating_point() else 255.0
        return self._scale(frames.permute(3, 0, 1, 2).float(), scale)

    def _scale(self, pixels: torch.Tensor, maximum: float) -> torch.Tensor:
        """Float pixels in `[0, maximum]`, scaled to [0, 1] and normalised, in place: one multiply and one subtract,
        as this runs over every pixel of a batch."""
        return pixels.mul_(1.0 / (maximum * self.image_std)).sub_(self.image_mean / self.image_std)

    def training_crop(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, bool]:
        """One training view of `height` x `width` frames: `(top, left, size, flip)`, a `size` square of the frames
        that becomes the `train_crop_size` crop, and whether it is mirrored.

        The short side is drawn from `train_short_side_range` as before; the square is the part of the frame that a
        `train_crop_size` crop of the frame resized to that short side covers. Cutting it first and resizing only
        it gives that crop (up to the resampling filter at the square's edges and sub-pixel rounding of its
        position) at a fraction of the cost: a 112² crop of a 160x284 frame resizes ~140² pixels, not 45,000."""
        low, high = self.train_short_side_range
        side = int(torch.randint(low, high + 1, (1,), generator=generator))
        short = min(height, width)
        size = min(short, max(1, round(self.train_crop_size * short / side)))
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        flip = self.horizontal_flip and bool(torch.rand((), generator=generator) < 0.5)
        return top, left, size, flip

    def crop_and_resize(self, frames: torch.Tensor, top: int, left: int, size: int, flip: bool = False) -> torch.Tensor:
        """The `size` square at `(top, left)` of frames `[N, H, W, 3]`, mirrored if `flip`, resized to
        `train_crop_size` (bilinear, antialiased; uint8 stays uint8)."""
        window = self.crop(frames, size, top, left)
        crop = self.train_crop_size
        # The fast uint8 kernel wants channels-last contiguous input, and a window of a frame is not: the copy that
        # makes it so also mirrors it. (The resize commutes with mirroring: the same values, bit for bit.)
        window = window.flip(2) if flip else window
        if size == crop:
            return window
        images = window.contiguous().permute(0, 3, 1, 2)
        if images.dtype != torch.uint8:
            images = images.float()
        resized = torch.nn.functional.interpolate(images, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)
        return resized.permute(0, 2, 3, 1)

    def _training_view(
        self,
        frames: torch.Tensor,
        generator: torch.Generator | None,
        crop: tuple[int, int, int, bool] | None = None,
    ) -> torch.Tensor:
        """Frames `[N, H, W, 3]` -> `[N, crop, crop, 3]`: one random scale, crop and flip for all of them
        ([`training_crop`], unless `crop` gives one already drawn), cropped before resizing."""
        top, left, size, flip = crop if crop is not None else self.training_crop(*frames.shape[1:3], generator)
        return self.crop_and_resize(frames, top, left, size, flip)

    def normalize(self, pixel_values: torch.Tensor, segment_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised `pixel_values` (`do_normalize=False`: uint8 `[..., 3, F, h, w]`) -> the model's float input,
        on the tensor's own device: meant for the training device, right before the forward pass, so that data
        loaders move 1 byte per value instead of 4 and skip the float work. Segments whose `segment_mask` is 0 are
        zeros, as in normalised output."""
        if pixel_values.is_floating_point():
            raise ValueError("pixel_values are already normalised (float); normalize takes the uint8 values of do_normalize=False.")
        return zero_masked_segments(self._scale(pixel_values.float(), 255.0), segment_mask)

    @staticmethod
    def spatial_crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
        """`(top, left)` of `num_crops` squares of side `size` spread evenly along the long side, centred on the
        short one; with 3: left (top), centre, right (bottom), the authors' spatial test views."""
        if num_crops == 1:
            return [((height - size) // 2, (width - size) // 2)]
        along = [math.ceil(i * (max(height, width) - size) / (num_crops - 1)) for i in range(num_crops)]
        if width >= height:
            return [(math.ceil((height - size) / 2), offset) for offset in along]
        return [(offset, math.ceil((width - size) / 2)) for offset in along]

    def process_segment(
        self, frames: torch.Tensor, training: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One segment `[F, H, W, 3]` (uint8, or float in [0, 1]) → `[3, F, crop, crop]` float32."""
        if training:
            return self._normalize(self._training_view(frames, generator))
        resized = self.resize_short_side(frames, self.eval_short_side)
        return self._normalize(self._center_crop(resized, self.eval_crop_size))

    def preprocess(
        self,
        videos: torch.Tensor | np.ndarray,
        training: bool = False,
        generator: torch.Generator | None = None,
        return_tensors: str | None = None,
        spatial_crop: int | None = None,
        num_spatial_crops: int = 1,
        do_normalize: bool = True,
        crop: tuple[int, int, int, bool] | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            videos (`torch.Tensor` or `np.ndarray`): the segments of one clip `[S, F, H, W, 3]` (or one `[F, H, W,
                3]`), uint8 or float in [0, 1].
            training (`bool`, *optional*, defaults to `False`): random short side, crop and flip (one draw for the
                whole clip) instead of the evaluation crop.
            generator (`torch.Generator`, *optional*): randomness of the training augmentation.
            return_tensors (`str`, *optional*): `"pt"`, `"np"` or `None` (NumPy).
            spatial_crop (`int`, *optional*): evaluation: which of `num_spatial_crops` evenly spread crops to cut
                (default: the centre crop).
            num_spatial_crops (`int`, *optional*, defaults to 1): how many spatial views `spatial_crop` picks from.
            do_normalize (`bool`, *optional*, defaults to `True`): scale and normalise to float. With `False`, the
                crops keep the frames' dtype (uint8 `[0, 255]` for decoded video), in the same layout; [`normalize`]
                finishes them later, e.g. on the training device.
            crop (`tuple[int, int, int, bool]`, *optional*): training: the view `(top, left, size, flip)` drawn
                already by [`training_crop`], used instead of a new draw; `(0, 0, size, flip)` for frames that are
                that square already (cut while decoding).

        Returns:
            [`BatchFeature`] with `pixel_values` `[S, 3, F, crop, crop]`.
        """
        segments = torch.as_tensor(videos)
        if segments.ndim == 4:
            segments = segments[None]
        # All frames of the clip are resized in one call: one size serves them all in both modes.
        flat = segments.reshape(-1, *segments.shape[-3:])
        if training:
            views = self._training_view(flat, generator, crop)
        else:
            resized = self.resize_short_side(flat, self.eval_short_side)
            size = self.eval_crop_size
            if spatial_crop is None:
                views = self._center_crop(resized, size)
            else:
                if not 0 <= spatial_crop < num_spatial_crops:
                    raise ValueError(f"spatial_crop {spatial_crop} is not in [0, num_spatial_crops={num_spatial_crops}).")
                offsets = self.spatial_crop_offsets(*resized.shape[1:3], size, num_spatial_crops)
                views = self.crop(resized, size, *offsets[spatial_crop])
        if do_normalize:
            pixels = self._normalize(views).unflatten(1, segments.shape[:2]).permute(1, 0, 2, 3, 4)
        else:
            # [N, h, w, 3] -> [S, 3, F, h, w]: a copy, but of bytes.
            pixels = views.permute(3, 0, 1, 2).unflatten(1, segments.shape[:2]).permute(1, 0, 2, 3, 4).contiguous()
        return BatchFeature({"pixel_values": pixels if return_tensors == "pt" else pixels.numpy()}, tensor_type=return_tensors)

    def __call__(self, videos: torch.Tensor | np.ndarray, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)
