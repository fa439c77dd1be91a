"""Classifying a clip while it decodes: the segments are decoded in a background thread, and each is handed to the
visual CNN as soon as it exists, so that a clip's wall time approaches the longer of decoding and the model's forward
instead of their sum.

PyAV releases the GIL while it decodes and converts frames, and torch while it computes, so the two threads run at
once on two cores. The result is the serial path's (the processor on the whole clip, then the model): the same
segments, the same frames and audio, the same per-segment transforms; only the CNNs see the segments in groups
instead of all at once (tests compare the two).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import numpy as np
import torch

from .media_pemt import MediaClip, VideoSource, open_media
from .processing_pemt import PemtProcessor, segment_starts
from .video_processing_pemt import zero_masked_segments

__all__ = ["OverlappedClip", "start_overlapped"]


class _Cancelled(Exception):
    """Raised inside the decoding thread to stop it when the caller gave up on the clip."""


class OverlappedClip:
    """The segments of one clip, decoding in a background thread; [`OverlappedClip.classify`] runs a classifier on
    them as they come. Built by [`start_overlapped`], which decides whether a clip can take this path.

    Args:
        processor ([`PemtProcessor`]): makes the features (its video processor per group of segments, its feature
            extractor on the audio).
        clip ([`MediaClip`]): the opened file; closed by the decoding thread when it ends.
        starts (`list[float]`): the segments' start times, as the processor would place them.
        dtype (`torch.dtype`): the model's floating dtype, which the features are cast to (as the pipeline does).
    """

    def __init__(self, processor: PemtProcessor, clip: MediaClip, starts: list[float], dtype: torch.dtype):
        self.processor, self.clip, self.starts, self.dtype = processor, clip, starts, dtype
        self.name = clip.name
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._decode, name=f"pemt-decode {clip.name}", daemon=True)
        self._thread.start()

    # --- the decoding thread ------------------------------------------------------------------------------------

    def _decode(self) -> None:
        try:
            decoded = self.clip.read_segments(
                self.starts, self.processor.timing, self.processor.video_processor.storage_side(False),
                on_video_group=self._video_group,
            )
            audio = self.processor.feature_extractor(decoded.waveform, training=False, return_tensors="pt")["audio_values"]
            audio_mask = torch.as_tensor(decoded.audio_valid, dtype=torch.long)
            zero_masked_segments(audio, audio_mask)
            self._queue.put(("done", torch.as_tensor(decoded.video_valid, dtype=torch.long), audio.to(self.dtype), audio_mask))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self._queue.put(("error", err))
        finally:
            self.clip.close()

    def _video_group(self, indices: list[int], frames: np.ndarray, valid: np.ndarray) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        # The processor's transforms are per segment, so a group gives the rows the whole clip would.
        pixels = self.processor.video_processor(torch.from_numpy(frames), return_tensors="pt")["pixel_values"]
        mask = torch.as_tensor(valid, dtype=torch.long)
        zero_masked_segments(pixels, mask)
        self._queue.put(("video", indices, pixels.to(self.dtype), mask))

    # --- the caller's thread ------------------------------------------------------------------------------------

    def classify(self, model: Any) -> Any:
        """Runs `model` (a [`PemtForAudioVisualClassification`]) on the clip as one row: the visual CNN on each group
        of segments as it is decoded, then the audio CNN, the Transformers and the head. Returns the model's output.

        Raises:
            [`MediaDecodeError`]: the clip cannot be decoded (raised in the decoding thread; the message names it).
        """
        backbone = getattr(model, model.base_model_prefix)
        count = len(self.starts)
        visual = [None] * count
        try:
            while True:
                kind, *payload = self._queue.get()
                if kind == "error":
                    raise payload[0]
                if kind == "done":
                    video_mask, audio_values, audio_mask = payload
                    break
                indices, pixels, mask = payload
                if "visual" in model.modalities:
                    embedded = backbone.embed_visual(pixels[None], mask[None])[0]
                    for row, index in enumerate(indices):
                        visual[index] = embedded[row]
        finally:
            self._cancelled.set()
        inputs = {}
        if "visual" in model.modalities:
            dim = model.config.visual_embedding_dim
            # Groups where nothing decoded were not reported: masked, so their embedding is the zeros the CNN gives.
            zeros = torch.zeros(dim, dtype=self.dtype)
            inputs["visual_cnn_embeddings"] = torch.stack([v if v is not None else zeros for v in visual])[None]
            inputs["visual_segment_mask"] = video_mask[None]
        if "audio" in model.modalities:
            inputs["audio_cnn_embeddings"] = backbone.embed_audio(audio_values[None], audio_mask[None])
            inputs["audio_segment_mask"] = audio_mask[None]
        return model(**inputs)

    def close(self) -> None:
        """Stops the decoding thread at its next group (when the caller gives up on the clip)."""
        self._cancelled.set()


def start_overlapped(
    processor: PemtProcessor, source: VideoSource, dtype: torch.dtype, decoder_threads: int | None = 1
) -> OverlappedClip | None:
    """Opens `source` and starts decoding it in the background, or returns `None` where the clip takes the serial
    path. `decoder_threads` (default 1, see [`open_media`]): the decoding thread is the parallelism here; FFmpeg's own
    frame threads would compete with the CNN for the same cores (one decoder thread gives the same frames).

    The serial path is taken for a file object (the serial path could not read it again), arrays (nothing to
    decode), a clip without video or audio, shorter than one segment, or whose segments coincide (the processor's
    padding and de-duplication rules then apply).

    Raises:
        [`MediaDecodeError`]: the source cannot be opened; the message names it.
    """
    if not isinstance(source, (str, os.PathLike, bytes)):
        return None
    clip = open_media(source, decoder_threads)
    timing = processor.timing
    try:
        if not isinstance(clip, MediaClip) or not (clip.has_video and clip.has_audio) or clip.duration < timing.span:
            clip.close()
            return None
        starts = segment_starts(clip.duration, timing.span, processor.num_segments)[0]
        if len(set(starts)) != len(starts):
            clip.close()
            return None
        return OverlappedClip(processor, clip, starts, dtype)
    except BaseException:
        clip.close()
        raise

