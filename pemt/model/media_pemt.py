"""Decoding of the segments PEMT reads from a video file, and nothing more.

A clip is opened once; its duration decides where segments start; then only the spans the segments cover are
decoded: the decoder seeks back to the keyframe before each span and decodes forward to its end. Segments that
overlap or touch are decoded in one pass. Memory holds the frames and samples of the segments taken, never the
whole file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
import numpy as np

__all__ = ["MediaDecodeError", "SegmentTiming", "DecodedSegments", "open_media", "MediaClip", "ArrayClip"]

# Spans closer than this are decoded in one pass: a seek re-decodes from a keyframe, which costs more than
# decoding a short gap.
_MERGE_GAP_SECONDS = 0.25


class MediaDecodeError(ValueError):
    """A video source cannot be read: empty, truncated, not a media file, or without the streams asked for.

    The message names the source (its path where there is one) and the problem.
    """


@dataclass(frozen=True)
class SegmentTiming:
    """Where a segment's frames and samples lie in time.

    Args:
        frames_per_segment (`int`): frames taken per segment.
        frame_stride (`int`): every `frame_stride`-th frame of the video resampled to `video_fps` is taken.
        video_fps (`float`): rate the video is resampled to.
        audio_sampling_rate (`int`): rate the audio is resampled to.
    """

    frames_per_segment: int
    frame_stride: int
    video_fps: float
    audio_sampling_rate: int

    @property
    def span(self) -> float:
        """Seconds one segment covers."""
        return self.frames_per_segment * self.frame_stride / self.video_fps

    @property
    def audio_samples(self) -> int:
        """Audio samples per segment (the same rounding as `PemtConfig.audio_segment_samples`)."""
        return round(self.span * self.audio_sampling_rate)

    def frame_times(self, start: float) -> np.ndarray:
        """Timestamps (seconds) of the frames a segment starting at `start` takes."""
        return start + np.arange(self.frames_per_segment) * (self.frame_stride / self.video_fps)


@dataclass
class DecodedSegments:
    """Raw segments of one clip.

    Args:
        frames (`np.ndarray` or `None`): `[S, F, H, W, 3]`, uint8 (or float in [0, 1] for float array input);
            `None` when the clip has no video.
        waveform (`np.ndarray` or `None`): `[S, samples]` float32 mono at the target rate; `None` without audio.
    """

    frames: np.ndarray | None
    waveform: np.ndarray | None


def _merge_spans(starts: Sequence[float], span: float) -> list[tuple[float, float, list[int]]]:
    """Groups segments whose spans overlap or nearly touch: `(group_start, group_end, segment indices)`."""
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    groups: list[tuple[float, float, list[int]]] = []
    for i in order:
        s, e = float(starts[i]), float(starts[i]) + span
        if groups and s <= groups[-1][1] + _MERGE_GAP_SECONDS:
            g_start, g_end, members = groups[-1]
            groups[-1] = (g_start, max(g_end, e), members + [i])
        else:
            groups.append((s, e, [i]))
    return groups


class MediaClip:
    """A media file opened with PyAV; use [`open_media`] to build one.

    Attributes:
        name (`str`): the path, or a description of the source, used in error messages.
        duration (`float`): seconds, the longer of the video and audio streams.
        has_video (`bool`), has_audio (`bool`): which streams exist.
    """

    def __init__(self, container: av.container.InputContainer, name: str):
        self.container = container
        self.name = name
        self.video_stream = container.streams.video[0] if container.streams.video else None
        self.audio_stream = container.streams.audio[0] if container.streams.audio else None
        if self.video_stream is None and self.audio_stream is None:
            raise MediaDecodeError(f"{name}: no video or audio stream in the file.")
        # Both streams are measured from the container's start so that audio and video stay aligned.
        self.origin = (container.start_time or 0) / av.time_base
        self.duration = self._duration()
        # One converter for all frames: `VideoFrame.to_ndarray(format=...)` builds a new libswscale context per
        # frame, which costs 10x the conversion itself at the ~160-pixel sizes of prepared clips.
        self._reformatter = av.video.reformatter.VideoReformatter()

    @property
    def has_video(self) -> bool:
        return self.video_stream is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_stream is not None

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> MediaClip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _duration(self) -> float:
        streams = [s for s in (self.video_stream, self.audio_stream) if s is not None]
        known = [float(s.duration * s.time_base) for s in streams if s.duration]
        if known:
            return max(known)
        if self.container.duration:
            return self.container.duration / av.time_base
        # Some containers (streamed webm/mkv) carry no duration: demuxing without decoding finds the last packet.
        last = 0.0
        try:
            for packet in self.container.demux(*streams):
                if packet.pts is not None:
                    end = (packet.pts + (packet.duration or 0)) * packet.time_base
                    last = max(last, float(end) - self.origin)
        except av.error.FFmpegError as err:
            raise MediaDecodeError(f"{self.name}: cannot read the file to find its duration ({err}).") from err
        self.container.seek(0)
        return last

    def read_segments(
        self, starts: Sequence[float], timing: SegmentTiming, max_short_side: int | None = None
    ) -> DecodedSegments:
        """Decodes the frames and audio of segments starting at `starts` (seconds).

        `max_short_side`: frames with a longer short side are converted to RGB at that short side by libswscale
        (area filter) while decoding. Converting a 720p frame costs more than decoding it; the frames PEMT needs are
        ~128 pixels, so this saves most of the time and memory. Callers then crop and resize in torch as usual.
        """
        frames = self._read_video(starts, timing, max_short_side) if self.has_video else None
        waveform = self._read_audio(starts, timing) if self.has_audio else None
        return DecodedSegments(frames, waveform)

    def _seek(self, stream: av.stream.Stream, seconds: float) -> None:
        target = int((seconds + self.origin) / stream.time_base)
        try:
            self.container.seek(max(target, 0), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            # Unseekable input (e.g. a pipe-like stream): decode from the start instead.
            self.container.seek(0)

    def _read_video(self, starts: Sequence[float], timing: SegmentTiming, max_short_side: int | None) -> np.ndarray:
        stream = self.video_stream
        stream.thread_type = "AUTO"
        out = None
        for group_start, _, members in _merge_spans(starts, timing.span):
            wanted = np.unique(np.concatenate([timing.frame_times(starts[i]) for i in members]))
            picked = self._pick_frames(group_start, wanted, max_short_side)
            if out is None:
                out = np.empty((len(starts), timing.frames_per_segment, *picked[0].shape), dtype=np.uint8)
            for i in members:
                for k, t in enumerate(np.searchsorted(wanted, timing.frame_times(starts[i]))):
                    out[i, k] = picked[t]
        return out

    def _to_rgb(self, frame: av.VideoFrame, max_short_side: int | None) -> np.ndarray:
        width, height = frame.width, frame.height
        if max_short_side is None or min(width, height) <= max_short_side:
            return self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        # The same rounding as `PemtVideoProcessor.resize_short_side`, whose resize then has nothing left to do.
        scale = max_short_side / min(width, height)
        width, height = max(max_short_side, round(width * scale)), max(max_short_side, round(height * scale))
        return self._reformatter.reformat(frame, format="rgb24", width=width, height=height, interpolation="AREA").to_ndarray()

    def _pick_frames(self, group_start: float, wanted: np.ndarray, max_short_side: int | None) -> list[np.ndarray]:
        """For each wanted time, the last decoded frame at or before it (the first frame if none is)."""
        self._seek(self.video_stream, group_start)
        picked: list[np.ndarray] = []
        previous, previous_array = None, None
        step = 1.0 / float(self.video_stream.average_rate or 30)
        position = 0
        try:
            for index, frame in enumerate(self.container.decode(self.video_stream)):
                time = frame.time - self.origin if frame.time is not None else index * step
                if previous is None:
                    # Times before the first decoded frame take that frame.
                    previous = frame
                while position < len(wanted) and wanted[position] < time - 1e-6:
                    if previous_array is None:
                        previous_array = self._to_rgb(previous, max_short_side)
                    picked.append(previous_array)
                    position += 1
                if position == len(wanted):
                    break
                if previous is not frame:
                    previous, previous_array = frame, None
        except av.error.FFmpegError as err:
            if previous is None:
                raise MediaDecodeError(f"{self.name}: video cannot be decoded ({err}).") from err
        if previous is None:
            raise MediaDecodeError(f"{self.name}: the video stream holds no decodable frame.")
        if position < len(wanted):
            # Past the end of the stream: the last frame is held, as a player would show it.
            last = previous_array if previous_array is not None else self._to_rgb(previous, max_short_side)
            picked.extend([last] * (len(wanted) - position))
        return picked

    def _read_audio(self, starts: Sequence[float], timing: SegmentTiming) -> np.ndarray:
        rate = timing.audio_sampling_rate
        out = np.zeros((len(starts), timing.audio_samples), dtype=np.float32)
        for group_start, group_end, members in _merge_spans(starts, timing.span):
            samples, first_time = self._decode_audio_span(group_start, group_end, rate)
            for i in members:
                offset = round((starts[i] - first_time) * rate)
                source_from, target_from = max(offset, 0), max(-offset, 0)
                chunk = samples[source_from : source_from + timing.audio_samples - target_from]
                out[i, target_from : target_from + len(chunk)] = chunk
        return out

    def _decode_audio_span(self, start: float, end: float, rate: int) -> tuple[np.ndarray, float]:
        """Mono samples at `rate` from the frame at or before `start` to past `end`, and the time of the first."""
        self._seek(self.audio_stream, start)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        first_time = None
        try:
            for frame in self.container.decode(self.audio_stream):
                time = frame.time - self.origin if frame.time is not None else None
                if first_time is None:
                    first_time = time if time is not None else start
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                if time is not None and time > end:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as err:
            if not chunks:
                raise MediaDecodeError(f"{self.name}: audio cannot be decoded ({err}).") from err
        if not chunks:
            return np.zeros(0, dtype=np.float32), start
        return np.concatenate(chunks).astype(np.float32, copy=False), first_time


class ArrayClip:
    """Already-decoded media: a dict with `frames` (`[N, H, W, 3]`) and `video_fps`, and/or `waveform`
    (`[channels, samples]` or `[samples]`) and `sampling_rate`. Either part may be missing."""

    def __init__(self, data: dict[str, Any], name: str = "<arrays>"):
        self.name = name
        frames = data.get("frames")
        self.frames = None if frames is None or len(frames) == 0 else np.asarray(frames)
        if self.frames is not None:
            if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
                raise MediaDecodeError(f"{name}: frames must be [N, H, W, 3]; got shape {self.frames.shape}.")
            if "video_fps" not in data:
                raise MediaDecodeError(f"{name}: frames are given without 'video_fps'.")
            self.video_fps = float(data["video_fps"])
        waveform = data.get("waveform")
        self.waveform = None
        if waveform is not None and np.size(waveform) > 0:
            if "sampling_rate" not in data:
                raise MediaDecodeError(f"{name}: a waveform is given without 'sampling_rate'.")
            waveform = np.asarray(waveform, dtype=np.float32)
            self.waveform = waveform.mean(axis=0) if waveform.ndim == 2 else waveform
            self.sampling_rate = int(data["sampling_rate"])
        if self.frames is None and self.waveform is None:
            raise MediaDecodeError(f"{name}: neither frames nor a waveform is given.")
        lengths = []
        if self.frames is not None:
            lengths.append(len(self.frames) / self.video_fps)
        if self.waveform is not None:
            lengths.append(len(self.waveform) / self.sampling_rate)
        self.duration = max(lengths)

    has_video = property(lambda self: self.frames is not None)
    has_audio = property(lambda self: self.waveform is not None)

    def close(self) -> None:
        pass

    def __enter__(self) -> ArrayClip:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read_segments(
        self, starts: Sequence[float], timing: SegmentTiming, max_short_side: int | None = None
    ) -> DecodedSegments:
        """Frames and audio of segments starting at `starts`; `max_short_side` is ignored (resizing is torch's)."""
        frames = waveform = None
        if self.frames is not None:
            times = np.stack([timing.frame_times(s) for s in starts])
            # Nearest-earlier frame, as for files; a small tolerance keeps exact multiples from rounding down.
            index = np.clip(np.floor(times * self.video_fps + 1e-6).astype(int), 0, len(self.frames) - 1)
            frames = self.frames[index]
        if self.waveform is not None:
            resampled = _resample(self.waveform, self.sampling_rate, timing.audio_sampling_rate)
            waveform = np.zeros((len(starts), timing.audio_samples), dtype=np.float32)
            for i, s in enumerate(starts):
                begin = round(s * timing.audio_sampling_rate)
                chunk = resampled[begin : begin + timing.audio_samples]
                waveform[i, : len(chunk)] = chunk
        return DecodedSegments(frames, waveform)


def _resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Mono float waveform resampled with the same library (libswresample) that file audio goes through."""
    if source_rate == target_rate:
        return waveform
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[None]), format="fltp", layout="mono")
    frame.sample_rate = source_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


VideoSource = str | os.PathLike | bytes | BinaryIO | dict[str, Any] | Any


def open_media(source: VideoSource) -> MediaClip | ArrayClip:
    """Opens a clip from a path, bytes, a binary file object, a `datasets` video value (`{"path", "bytes"}` or a
    torchcodec `VideoDecoder`), or a dict of decoded arrays (see [`ArrayClip`]).

    Raises:
        [`MediaDecodeError`]: the source is empty, truncated, or not a media file; the message names it.
    """
    if isinstance(source, dict):
        if "frames" in source or "waveform" in source:
            return ArrayClip(source)
        if source.get("bytes") is not None:
            return _open_container(io.BytesIO(source["bytes"]), source.get("path") or "<bytes>")
        if source.get("path") is not None:
            return open_media(source["path"])
        raise MediaDecodeError(f"A video dict needs 'path', 'bytes', 'frames' or 'waveform'; got keys {list(source)}.")
    if type(source).__module__.startswith("torchcodec"):
        return _open_torchcodec(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise MediaDecodeError(f"{path}: no such file.")
        if os.path.getsize(path) == 0:
            raise MediaDecodeError(f"{path}: the file is empty (0 bytes).")
        return _open_container(path, path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaDecodeError("<bytes>: the data is empty (0 bytes).")
        return _open_container(io.BytesIO(bytes(source)), "<bytes>")
    if hasattr(source, "read"):
        return _open_container(source, str(getattr(source, "name", "<file object>")))
    raise MediaDecodeError(f"Cannot read a video from a {type(source).__name__}.")


def _open_container(file: str | BinaryIO, name: str) -> MediaClip:
    try:
        container = av.open(file, mode="r")
    except (av.error.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise MediaDecodeError(f"{name}: not a readable media file, or truncated ({reason}).") from err
    try:
        return MediaClip(container, name)
    except BaseException:
        container.close()
        raise


def _open_torchcodec(decoder: Any) -> MediaClip | ArrayClip:
    """`datasets` keeps the encoded source on its torchcodec decoders; frames are read through the API otherwise."""
    encoded = getattr(decoder, "_hf_encoded", None)
    if encoded and (encoded.get("bytes") is not None or encoded.get("path") is not None):
        return open_media(encoded)
    path = getattr(decoder.metadata, "path", None)
    if path:
        return open_media(path)
    frames = decoder[0 : len(decoder)]
    frames = frames.data if hasattr(frames, "data") else frames
    array = frames.numpy()
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    return ArrayClip({"frames": array, "video_fps": decoder.metadata.average_fps}, name="<torchcodec decoder>")
