"""PEMT's processor: video files (or decoded arrays) in, segment tensors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .configuration_pemt import PemtConfig
from .media_pemt import DecodedSegments, MediaDecodeError, SegmentTiming, VideoSource, WindowChooser, open_media
from .feature_extraction_pemt import PemtFeatureExtractor
from .video_processing_pemt import PemtVideoProcessor, zero_masked_segments

__all__ = ["PemtProcessor", "segment_starts"]

_REQUIRED_FIELDS = {
    "feature_extractor": ("sampling_rate", "num_mel_bins", "n_fft", "hop_length", "audio_frames", "log_offset"),
    "video_processor": (
        "frames_per_segment", "frame_stride", "video_fps", "train_short_side_range", "train_crop_size",
        "eval_short_side", "eval_crop_size", "image_mean", "image_std",
    ),
}


def segment_starts(
    duration: float,
    span: float,
    num_segments: int,
    num_views: int = 1,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[float]]:
    """Start times (seconds) of `num_segments` segments of `span` seconds in a clip of `duration` seconds.

    Evaluation: for one view, evenly spaced from 0 to `duration - span` (a single segment sits in the middle);
    `num_views = k` views interleave, view `v` shifted by `v / k` of the spacing, the last view ending at the clip's
    end. Training: one random start per equal slice of `[0, duration - span]`, so segments stay in order and spread
    over the clip. A clip shorter than the span gives starts at 0 (its frames are held at the end).
    """
    room = max(duration - span, 0.0)
    if training:
        slot = room / num_segments
        return [
            [(i + float(torch.rand((), generator=generator))) * slot for i in range(num_segments)]
            for _ in range(num_views)
        ]
    if num_segments == 1 and num_views == 1:
        return [[room / 2]]
    step = room / (num_segments - 1 + (num_views - 1) / num_views)
    return [[(i + v / num_views) * step for i in range(num_segments)] for v in range(num_views)]


class PemtProcessor(ProcessorMixin):
    r"""
    Builds PEMT's inputs from videos: decodes only the spans the segments cover (see [`open_media`]), then turns
    frames into `pixel_values` with [`PemtVideoProcessor`] and audio into log-mel `audio_values` with
    [`PemtFeatureExtractor`].

    A clip becomes `num_segments` segments of `frames_per_segment * frame_stride / video_fps` seconds each. For
    evaluation they are evenly spaced over the clip and overlap when the clip is shorter than their total span;
    for training they are placed at random (one per equal slice of the clip). The padding rule: a clip shorter than
    one segment (or arrays with fewer frames than one segment needs) gives a single real segment, its last frame
    held and its audio padded with silence, followed by `num_segments - 1` zero segments with mask 0.

    A modality the clip lacks gives zeros and an all-zero mask, unless `require_audio` / `require_video` asks for
    an error.

    Args:
        feature_extractor ([`PemtFeatureExtractor`]): the audio part.
        video_processor ([`PemtVideoProcessor`]): the visual part, with the frame-sampling numbers.
        num_segments (`int`, *optional*, defaults to 10): segments `T` per clip.

    Example:

    ```python
    >>> from pemt import PemtConfig, PemtProcessor

    >>> processor = PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))
    >>> inputs = processor(videos=["a.mp4", "b.mkv"], return_tensors="pt")
    >>> inputs["pixel_values"].shape  # [B, T, 3, F, crop, crop]
    torch.Size([2, 3, 3, 4, 16, 16])
    ```"""

    def __init__(
        self, feature_extractor: PemtFeatureExtractor, video_processor: PemtVideoProcessor, num_segments: int = 10, **kwargs
    ):
        super().__init__(feature_extractor=feature_extractor, video_processor=video_processor, **kwargs)
        self.num_segments = num_segments

    @classmethod
    def from_model_config(cls, config: PemtConfig) -> PemtProcessor:
        """Builds the processor from the input fields of a model config."""
        return cls(
            PemtFeatureExtractor.from_model_config(config),
            PemtVideoProcessor.from_model_config(config),
            num_segments=config.num_segments,
        )

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # The sub-processors are loaded by their own classes: `AutoVideoProcessor` needs torchvision, which PEMT
        # does not use.
        processor_dict = processor_dict or {}
        # Every input setting must come from the file: a missing one would silently take the paper's value and
        # give inputs of a size the model was not trained on.
        source = f"{pretrained_model_name_or_path}: processor_config.json"
        missing = [f"'{part}'" for part in ("feature_extractor", "video_processor", "num_segments") if part not in processor_dict]
        for part, fields in _REQUIRED_FIELDS.items():
            missing += [f"{part}.{name}" for name in fields if part in processor_dict and name not in processor_dict[part]]
        if missing:
            raise ValueError(
                f"{source} lacks {', '.join(missing)}; save the processor with PemtProcessor.save_pretrained, or build "
                "one from the model's config with PemtProcessor.from_model_config."
            )
        try:
            return [
                PemtFeatureExtractor(**processor_dict["feature_extractor"]),
                PemtVideoProcessor(**processor_dict["video_processor"]),
            ]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        # The generic check resolves video processors through a registry that exists only with torchvision.
        expected = {"feature_extractor": PemtFeatureExtractor, "video_processor": PemtVideoProcessor}[argument_name]
        if not isinstance(argument, expected):
            raise TypeError(f"{argument_name} must be a {expected.__name__}; got a {type(argument).__name__}.")
        return expected

    @property
    def timing(self) -> SegmentTiming:
        """Where frames and samples of a segment lie in time."""
        video = self.video_processor
        return SegmentTiming(video.frames_per_segment, video.frame_stride, video.video_fps, self.feature_extractor.sampling_rate)

    def decode(
        self,
        video: VideoSource,
        training: bool = False,
        num_temporal_views: int = 1,
        generator: torch.Generator | None = None,
        short_side: int | None = None,
        audio: VideoSource | None = None,
        decoder_threads: int | None = None,
        window: WindowChooser | None = None,
    ) -> tuple[DecodedSegments, np.ndarray, str]:
        """Decodes the segments of one clip, all views at once (overlapping views share decoding). Frames come at
        `short_side` (default: the largest the mode's crops need) when the video is larger. With `audio` (a separate
        file, bytes, or dict with `waveform` and `sampling_rate`), the audio of the segments is read from it, at the
        same times, instead of from `video`. `decoder_threads`: see [`open_media`]; `window`: see
        [`MediaClip.read_segments`].

        Returns:
            `(segments, real, name)`: segments `[k * T, ...]` view-major, a boolean `[k * T]` mask of real segments
            (the padding rule), and the clip's name for messages. `segments.video_valid` / `audio_valid` are the
            masks to use: `real` and, in addition, decoded.
        """
        timing = self.timing
        with open_media(video, decoder_threads) as clip:
            if clip.duration < timing.span:
                starts = [[0.0] * self.num_segments for _ in range(num_temporal_views)]
                real = np.zeros((num_temporal_views, self.num_segments), dtype=bool)
                real[:, 0] = True
            else:
                starts = segment_starts(
                    clip.duration, timing.span, self.num_segments, num_temporal_views, training, generator
                )
                real = np.ones((num_temporal_views, self.num_segments), dtype=bool)
            flat = [s for view in starts for s in view]
            unique = sorted(set(flat))
            short_side = short_side or self.video_processor.storage_side(training)
            decoded = clip.read_segments(unique, timing, short_side, window)
            index = [unique.index(s) for s in flat]
            if audio is not None:
                with open_media(audio, decoder_threads) as sound:
                    separate = sound.read_segments(unique, timing, short_side)
                    if separate.waveform is None:
                        raise MediaDecodeError(f"{sound.name}: given as audio, but it has no audio stream.")
                decoded = DecodedSegments(
                    decoded.frames, separate.waveform, decoded.video_valid, separate.audio_valid, decoded.window
                )
            real = real.reshape(-1)
            # Every start distinct and in order (training draws): no reordering, and no copy of the frames (tens of
            # MB at paper size).
            pick = slice(None) if index == list(range(len(unique))) else index
            # Segments the decoder could not fill (past a truncated end, before a late start) are not real either.
            segments = DecodedSegments(
                decoded.frames[pick] if decoded.frames is not None else None,
                decoded.waveform[pick] if decoded.waveform is not None else None,
                decoded.video_valid[pick] & real if decoded.frames is not None else None,
                decoded.audio_valid[pick] & real if decoded.waveform is not None else None,
                decoded.window,
            )
            return segments, real, clip.name

    def _clip_features(
        self,
        video: VideoSource,
        training: bool,
        num_temporal_views: int,
        require_audio: bool,
        require_video: bool,
        generator: torch.Generator | None,
        num_spatial_crops: int = 1,
        audio: VideoSource | None = None,
        do_normalize: bool = True,
        decoder_threads: int | None = None,
    ) -> dict[str, torch.Tensor]:
        # A training clip with one temporal view has one crop: it is drawn when the first frame is decoded (the same
        # draw, in the same order, as on whole frames) and only its square is kept, not the whole frame.
        flips: list[bool] = []

        def training_window(height: int, width: int) -> tuple[int, int, int]:
            top, left, size, flip = self.video_processor.training_crop(height, width, generator)
            flips.append(flip)
            return top, left, size

        one_crop = training and num_temporal_views == 1
        segments, real, name = self.decode(
            video, training, num_temporal_views, generator, audio=audio, decoder_threads=decoder_threads,
            window=training_window if one_crop else None,
        )
        video_kwargs = {"return_tensors": "pt", "do_normalize": do_normalize}
        count = len(real)
        if segments.frames is None:
            if require_video:
                raise MediaDecodeError(f"{name}: no video stream, and require_video=True.")
            crop = self.video_processor.train_crop_size if training else self.video_processor.eval_crop_size
            pixels = torch.zeros(count, 3, self.video_processor.frames_per_segment, crop, crop, dtype=None if do_normalize else torch.uint8)
            visual_segment_mask = torch.zeros(count, dtype=torch.long)
        elif segments.window is not None:
            size = segments.window[2]
            frames = torch.from_numpy(segments.frames)
            pixels = self.video_processor(frames, training=True, crop=(0, 0, size, flips[0]), **video_kwargs)["pixel_values"]
            visual_segment_mask = torch.as_tensor(segments.video_valid, dtype=torch.long)
        elif training:
            # One augmentation draw per temporal view: all segments of a view share its crop and flip.
            views = torch.from_numpy(segments.frames).unflatten(0, (num_temporal_views, self.num_segments))
            per_view = [self.video_processor(view, training=True, generator=generator, **video_kwargs)["pixel_values"] for view in views]
            # One view (training's usual case) is used as it is: a cat would copy 12-48 MB at paper size.
            pixels = per_view[0] if len(per_view) == 1 else torch.cat(per_view)
            visual_segment_mask = torch.as_tensor(segments.video_valid, dtype=torch.long)
        else:
            pixels = self.video_processor(torch.from_numpy(segments.frames), **video_kwargs)["pixel_values"]
            visual_segment_mask = torch.as_tensor(segments.video_valid, dtype=torch.long)
        if num_spatial_crops > 1 and segments.frames is not None:
            # Spatial views: rows per temporal view, crop by crop ([view, crop, segment], flattened).
            frames = torch.from_numpy(segments.frames)
            crops = [
                self.video_processor(frames, spatial_crop=i, num_spatial_crops=num_spatial_crops, **video_kwargs)["pixel_values"]
                for i in range(num_spatial_crops)
            ]
            pixels = torch.stack([c.unflatten(0, (num_temporal_views, self.num_segments)) for c in crops], dim=1).flatten(0, 2)
        if segments.waveform is None:
            if require_audio:
                raise MediaDecodeError(f"{name}: no audio stream, and require_audio=True.")
            extractor = self.feature_extractor
            audio = torch.zeros(count, 1, extractor.num_mel_bins, extractor.audio_frames)
            audio_segment_mask = torch.zeros(count, dtype=torch.long)
        else:
            audio = self.feature_extractor(segments.waveform, training=training, generator=generator, return_tensors="pt")["audio_values"]
            audio_segment_mask = torch.as_tensor(segments.audio_valid, dtype=torch.long)
        if num_spatial_crops > 1:
            # Every spatial view hears the same audio; without video, the zeros are repeated like the audio.
            def per_crop(values: torch.Tensor) -> torch.Tensor:
                if values.shape[0] == count * num_spatial_crops:
                    return values
                grouped = values.unflatten(0, (num_temporal_views, 1, self.num_segments))
                return grouped.expand(-1, num_spatial_crops, *grouped.shape[2:]).flatten(0, 2)

            pixels, audio, visual_segment_mask, audio_segment_mask = map(
                per_crop, (pixels, audio, visual_segment_mask, audio_segment_mask)
            )
            real = np.tile(real.reshape(num_temporal_views, 1, -1), (1, num_spatial_crops, 1)).reshape(-1)
        # Padding and undecodable segments are zeros whatever the decoder gave for them.
        zero_masked_segments(pixels, visual_segment_mask)
        zero_masked_segments(audio, audio_segment_mask)
        return {"pixel_values": pixels, "audio_values": audio, "visual_segment_mask": visual_segment_mask, "audio_segment_mask": audio_segment_mask}

    def __call__(
        self,
        videos: VideoSource | Sequence[VideoSource] = None,
        return_tensors: str | None = "pt",
        training: bool = False,
        num_temporal_views: int = 1,
        require_audio: bool = False,
        require_video: bool = False,
        generator: torch.Generator | None = None,
        num_spatial_crops: int = 1,
        audio: VideoSource | np.ndarray | torch.Tensor | Sequence | None = None,
        sampling_rate: int | None = None,
        do_normalize: bool = True,
        decoder_threads: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            videos: one clip or a list: paths, bytes, binary file objects, `datasets` video values, or dicts of
                decoded arrays (`frames` + `video_fps`, `waveform` + `sampling_rate`).
            audio (*optional*): the sound of each clip from elsewhere, one per video: a path, bytes, file object,
                `datasets` audio value, or a waveform array (`[samples]` or `[channels, samples]`, with
                `sampling_rate`). It replaces the videos' own audio. Without `videos`, the audio alone is the clip.
            sampling_rate (`int`, *optional*): rate of waveform arrays given as `audio`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` or `"np"`.
            training (`bool`, *optional*, defaults to `False`): random segment placement, crops and SpecAugment.
            num_temporal_views (`int`, *optional*, defaults to 1): `k` evenly shifted sets of segments per clip;
                the batch holds `B * k` rows, clip-major (all views of clip 0, then of clip 1, ...).
            require_audio (`bool`, *optional*, defaults to `False`): a clip without audio is an error.
            require_video (`bool`, *optional*, defaults to `False`): a clip without video is an error.
            generator (`torch.Generator`, *optional*): randomness of training placement and augmentation.
            num_spatial_crops (`int`, *optional*, defaults to 1): evaluation: `s` crops spread along each frame's long
                side (3: left, centre, right, the authors' test views) instead of the centre crop; every temporal
                view gives `s` rows, so the batch holds `B * k * s` rows (clip, then temporal view, then crop).
            do_normalize (`bool`, *optional*, defaults to `True`): `False` returns `pixel_values` as uint8 (0-255, the
                same layout, masked segments 0) for [`PemtVideoProcessor.normalize`] to finish on the training
                device: a quarter of the bytes through data-loader queues, and no float work in the workers.
            decoder_threads (`int`, *optional*): threads FFmpeg decodes each video with; `None` (default) lets it
                choose, the fastest for one clip; `1` costs the least CPU per clip, for data-loader workers that
                decode many clips side by side.

        Returns:
            [`BatchFeature`] with `pixel_values` `[B * k, T, 3, F, crop, crop]`, `audio_values`
            `[B * k, T, 1, num_mel_bins, audio_frames]`, and `visual_segment_mask`, `audio_segment_mask` `[B * k, T]` (1: real).

        Raises:
            [`MediaDecodeError`]: a clip cannot be read, or lacks a required modality; the message names it.
        """
        if kwargs:
            raise TypeError(
                f"PemtProcessor got unknown keyword argument(s) {', '.join(sorted(kwargs))}; see its docstring for "
                "what it takes."
            )
        sounds = self._audio_sources(audio, sampling_rate)
        if videos is None:
            if sounds is None:
                raise ValueError("PemtProcessor needs `videos` (or `audio` alone).")
            videos, sounds = sounds, None
        if not isinstance(videos, (list, tuple)):
            videos = [videos]
        if training and num_spatial_crops != 1:
            raise ValueError("num_spatial_crops is an evaluation setting; training takes one random crop per clip.")
        if sounds is not None and len(sounds) != len(videos):
            raise ValueError(f"{len(videos)} video(s) but {len(sounds)} audio input(s); give one audio per video.")
        sounds = sounds or [None] * len(videos)
        clips = [
            self._clip_features(
                v, training, num_temporal_views, require_audio, require_video, generator, num_spatial_crops, audio=a,
                do_normalize=do_normalize, decoder_threads=decoder_threads,
            )
            for v, a in zip(videos, sounds)
        ]
        shape = (len(videos) * num_temporal_views * num_spatial_crops, self.num_segments)
        data = {
            key: (clips[0][key] if len(clips) == 1 else torch.cat([c[key] for c in clips])).reshape(*shape, *clips[0][key].shape[1:])
            for key in clips[0]
        }
        if return_tensors != "pt":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _audio_sources(audio: Any, sampling_rate: int | None) -> list | None:
        """`audio` as a list of media sources, waveform arrays wrapped with their rate."""
        if audio is None:
            return None
        single = not isinstance(audio, (list, tuple)) or (
            len(audio) > 0 and isinstance(audio[0], (int, float, np.floating))
        )
        items = [audio] if single else list(audio)
        sources = []
        for item in items:
            if isinstance(item, torch.Tensor):
                item = item.detach().cpu().numpy()
            if isinstance(item, (np.ndarray, list)):
                if sampling_rate is None:
                    raise ValueError("Audio given as a waveform array needs `sampling_rate`.")
                item = {"waveform": np.asarray(item, dtype=np.float32), "sampling_rate": sampling_rate}
            sources.append(item)
        return sources

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "audio_values", "visual_segment_mask", "audio_segment_mask"]
