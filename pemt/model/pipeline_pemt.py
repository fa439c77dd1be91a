"""The `"audio-visual-classification"` pipeline: video files (or decoded arrays) in, ranked labels out."""

from __future__ import annotations

import io
import urllib.request
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from .compile_pemt import compile_pemt
from .media_pemt import MediaDecodeError
from .overlap_pemt import OverlappedClip, start_overlapped
from .weights_check_pemt import require_trained_heads

FUNCTIONS = ("softmax", "sigmoid", "none")
ERROR_MODES = ("raise", "return")
_DEFAULT = object()  # tells "top_k not given" (5) from `top_k=None` (all labels)


class AudioVisualClassificationPipeline(ChunkPipeline):
    r"""
    Classifies videos with a PEMT classifier and its processor.

    Each input is decoded once into `num_temporal_views` evenly shifted sets of segments, each seen through
    `num_spatial_crops` crops (3: left, centre, right); every view is one model row (so views and clips batch together
    with `batch_size`), and the scores are averaged over the views. An input is a
    path, an http(s) URL, bytes, a binary file object, a `datasets` video value, a dict of decoded arrays (see
    [`PemtProcessor`]), or the frames themselves as a `[frames, height, width, 3]` array or tensor (uint8, or float
    in [0, 1]; `[frames, 3, height, width]` is accepted too) at `video_fps` frames per second, without audio.

    Arguments of the constructor (`pipeline(...)`), besides the usual ones:
        torch_compile (`bool` or `dict`, *optional*, defaults to `False`): compile the model's CNNs with
            `torch.compile` (a dict is passed to it as keyword arguments); see [`compile_pemt`]. The first clip of
            each new shape pays the compilation (tens of seconds).
        overlap_decoding (`bool`, *optional*, defaults to `True`): decode a clip's segments in a background thread
            while the visual CNN runs on those already decoded (see [`OverlappedClip`]); the scores are the serial
            path's. It applies to one clip at a time (`batch_size=1`, no `num_workers`) with one temporal view and one
            crop, from a path or bytes, with video and audio; other calls take the serial path (decode, then model).

    Arguments of a call:
        top_k (`int` or `None`, *optional*, defaults to 5): how many labels to return; `None` returns all of them.
        function_to_apply (`str`, *optional*): `"softmax"`, `"sigmoid"` or `"none"` (the raw logits). By default
            softmax for single-label models and sigmoid for multi-label ones.
        num_temporal_views (`int`, *optional*, defaults to 1): sets of segments per clip, averaged.
        num_spatial_crops (`int`, *optional*, defaults to 1): 1 (centre) or 3 (left, centre, right) crops per view.
        video_fps (`float`, *optional*): frame rate of array inputs; defaults to the processor's `video_fps`.
        timeout (`float`, *optional*): seconds to wait for a URL.
        errors (`str`, *optional*, defaults to `"raise"`): `"raise"` raises [`MediaDecodeError`] naming the first
            unreadable input; `"return"` puts `{"error": message}` in that input's place and classifies every other
            input, also from generators and with `batch_size > 1`.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classifier = pipeline("audio-visual-classification", model="path/to/finetuned", trust_remote_code=True)
    >>> classifier("clip.mp4", top_k=3)
    [{'label': 'dog barking', 'score': 0.91}, ...]
    >>> classifier(["a.mp4", "broken.mp4"], errors="return")  # one bad file does not cost the others
    [[{'label': 'dog barking', 'score': 0.91}, ...], {'error': 'broken.mp4: not a readable media file, ...'}]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, torch_compile: bool | dict = False, overlap_decoding: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.overlap_decoding = overlap_decoding
        # A pretraining checkpoint loads with random heads: its rankings would look plausible and mean nothing.
        require_trained_heads(self.model)
        if torch_compile:
            compile_pemt(self.model, **(torch_compile if isinstance(torch_compile, dict) else {}))

    def _sanitize_parameters(
        self,
        top_k: int | None | object = _DEFAULT,
        function_to_apply: str | None = None,
        num_temporal_views: int | None = None,
        num_spatial_crops: int | None = None,
        video_fps: float | None = None,
        timeout: float | None = None,
        errors: str | None = None,
        **unknown,
    ) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(
                f"audio-visual-classification got unknown argument(s) {', '.join(sorted(unknown))}; it takes top_k, "
                "function_to_apply, num_temporal_views, num_spatial_crops, video_fps, timeout and errors (and batch_size, "
                "num_workers)."
            )
        preprocess = {}
        if num_temporal_views is not None:
            if int(num_temporal_views) < 1:
                raise ValueError(f"num_temporal_views must be at least 1; got {num_temporal_views}.")
            preprocess["num_temporal_views"] = int(num_temporal_views)
        if num_spatial_crops is not None:
            preprocess["num_spatial_crops"] = int(num_spatial_crops)
        if video_fps is not None:
            preprocess["video_fps"] = float(video_fps)
        if timeout is not None:
            preprocess["timeout"] = timeout
        if errors is not None:
            if errors not in ERROR_MODES:
                raise ValueError(f"errors must be one of {', '.join(map(repr, ERROR_MODES))}; got {errors!r}.")
            preprocess["errors"] = errors
        postprocess = {}
        if top_k is not _DEFAULT:
            if top_k is not None and int(top_k) < 1:
                raise ValueError(f"top_k must be a positive number of labels or None (all); got {top_k}.")
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if str(function_to_apply).lower() not in FUNCTIONS:
                raise ValueError(f"function_to_apply is {function_to_apply!r}; choose one of {', '.join(FUNCTIONS)}.")
            postprocess["function_to_apply"] = str(function_to_apply).lower()
        return preprocess, {}, postprocess

    def _as_video_source(self, inputs: Any, video_fps: float | None, timeout: float | None) -> Any:
        """URLs are fetched into memory; frame arrays become the processor's dict of decoded arrays."""
        if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
            with urllib.request.urlopen(inputs, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
                return io.BytesIO(response.read())
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            frames = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs
            if frames.ndim != 4 or 3 not in (frames.shape[1], frames.shape[-1]):
                raise ValueError(
                    f"A video array must be [frames, height, width, 3] (or [frames, 3, height, width]); got shape "
                    f"{tuple(frames.shape)}."
                )
            if frames.shape[-1] != 3:
                frames = frames.transpose(0, 2, 3, 1)
            fps = video_fps or self.processor.video_processor.video_fps
            return {"frames": np.ascontiguousarray(frames), "video_fps": fps}
        return inputs

    def get_iterator(self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params):
        # Overlapped clips travel as a handle on a decoding thread: they can be neither collated into a batch nor
        # sent from a worker process.
        if batch_size > 1 or num_workers > 0:
            preprocess_params = {**preprocess_params, "overlap": False}
        return super().get_iterator(inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params)

    def preprocess(
        self,
        inputs: Any,
        num_temporal_views: int = 1,
        num_spatial_crops: int = 1,
        video_fps: float | None = None,
        timeout: float | None = None,
        errors: str = "raise",
        overlap: bool = True,
    ):
        try:
            source = self._as_video_source(inputs, video_fps, timeout)
            overlapped = None
            if (self.overlap_decoding and overlap and num_temporal_views == 1 and num_spatial_crops == 1
                    and hasattr(self.model, "modalities")):
                overlapped = start_overlapped(self.processor, source, self.model.dtype)
            if overlapped is not None:
                yield {"is_last": True, "error": "", "overlapped": overlapped, "errors": errors}
                return
            features = self.processor(
                videos=source, num_temporal_views=num_temporal_views, num_spatial_crops=num_spatial_crops,
                return_tensors="pt",
            )
        except MediaDecodeError as err:
            if errors == "raise":
                raise
            # Every chunk of a batch carries the same keys, so the failed input travels as masked placeholders.
            yield {"is_last": True, "error": str(err), **self._placeholder()}
            return
        # A model loaded with `dtype=` reads inputs of that dtype.
        features = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in features.items()}
        views = num_temporal_views * num_spatial_crops
        for view in range(views):
            row = {key: value[view : view + 1] for key, value in features.items()}
            yield {"is_last": view == views - 1, "error": "", **row}

    def _placeholder(self) -> dict[str, torch.Tensor]:
        """All-masked zero inputs of the shapes one view of a clip gives: what an unreadable input occupies in a
        batch. Shapes come from the processor itself (run once on a blank second of arrays)."""
        if getattr(self, "_blank", None) is None:
            video, audio = self.processor.video_processor, self.processor.feature_extractor
            side = max(list(video.train_short_side_range) + [video.eval_short_side])
            blank = {
                "frames": np.zeros((int(video.video_fps) + 1, side, side, 3), dtype=np.uint8),
                "video_fps": video.video_fps,
                "waveform": np.zeros(audio.sampling_rate, dtype=np.float32),
                "sampling_rate": audio.sampling_rate,
            }
            features = self.processor(videos=blank, return_tensors="pt")
            self._blank = {
                k: torch.zeros_like(v[:1], dtype=self.model.dtype if v.is_floating_point() else v.dtype)
                for k, v in features.items()
            }
        return dict(self._blank)

    def _forward(self, model_inputs: dict) -> dict:
        is_last, error = model_inputs.pop("is_last"), model_inputs.pop("error")
        if isinstance(error, str) and error:
            # A lone failed input needs no forward pass.
            return {"logits": None, "is_last": is_last, "error": error}
        overlapped: OverlappedClip | None = model_inputs.pop("overlapped", None)
        if overlapped is not None:
            try:
                logits = overlapped.classify(self.model).logits
            except MediaDecodeError as err:
                if model_inputs["errors"] == "raise":
                    raise
                return {"logits": None, "is_last": is_last, "error": str(err)}
            finally:
                overlapped.close()
            return {"logits": logits, "is_last": is_last, "error": error}
        return {"logits": self.model(**self.model.select_inputs(model_inputs)).logits, "is_last": is_last, "error": error}

    def postprocess(
        self, model_outputs: list[dict], top_k: int | None = 5, function_to_apply: str | None = None
    ) -> list[dict[str, float]] | dict[str, str]:
        failed = [output["error"] for output in model_outputs if output["error"]]
        if failed:
            return {"error": failed[0]}
        logits = torch.cat([output["logits"] for output in model_outputs]).float()
        if function_to_apply is None:
            scores = self.model.probabilities(logits, num_views=len(model_outputs))[0]
        else:
            activation = {"softmax": lambda x: x.softmax(-1), "sigmoid": torch.sigmoid, "none": lambda x: x}
            scores = activation[function_to_apply](logits).mean(dim=0)
        count = scores.numel() if top_k is None else min(int(top_k), scores.numel())
        values, indices = scores.topk(count)
        id2label = self.model.config.id2label
        return [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(values, indices)]

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Saves the model and the processor (which the base pipeline does not save), so that
        `pipeline(model=save_directory)` rebuilds this pipeline."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
