"""Decoding of the segments PEMT reads from a video file, and nothing more.

A clip is opened once; its duration decides where segments start; then only the spans the segments cover are
decoded: the decoder seeks back to the keyframe before each span and decodes forward to its end, or, where that
keyframe lies further back than the gap from the last span (a long-GOP source), decodes on through the gap instead
(see `_DecoderCursor`). Segments that overlap or touch are decoded in one pass. Memory holds the frames and samples
of the segments taken, never the whole file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
import numpy as np

__all__ = ["MediaDecodeError", "SegmentTiming", "DecodedSegments", "open_media", "MediaClip", "ArrayClip"]

# Spans closer than this are decoded in one pass: a seek re-decodes from a keyframe, which costs more than
# decoding a short gap.
_MERGE_GAP_SECONDS = 0.25
# A stream whose decoder rejects this many packets in a row is taken to end there.
_MAX_REJECTED_PACKETS_IN_A_ROW = 64
# What PyAV raises for broken input: its FFmpeg errors (including `av.error.PermissionError` and
# `av.error.EOFError`, which are also OS errors), text it cannot decode (metadata that is not UTF-8), and OS errors
# of file objects.
_DECODER_ERRORS = (av.error.FFmpegError, UnicodeDecodeError, OSError, EOFError)

# Frame times further than this outside the clip's duration are not believed (see `MediaClip._time`).
_TIME_SLACK_SECONDS = 10.0
# Frames without a believable time skipped at the start of a decoding pass before times are taken as unknown.
_UNTIMED_FRAMES_SKIPPED = 8

logger = logging.getLogger(__name__)


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


# `(height, width)` of the decoded frames -> the square `(top, left, size)` of them to keep (see `read_segments`).
WindowChooser = Callable[[int, int], tuple[int, int, int]]
# `(segment indices, their frames, their valid flags)` of a group of segments just decoded (see `read_segments`).
VideoGroupCallback = Callable[[list[int], np.ndarray, np.ndarray], None]


@dataclass
class DecodedSegments:
    """Raw segments of one clip.

    Args:
        frames (`np.ndarray` or `None`): `[S, F, H, W, 3]`, uint8 (or float in [0, 1] for float array input);
            `None` when the clip has no video.
        waveform (`np.ndarray` or `None`): `[S, samples]` float32 mono at the target rate; `None` without audio.
        video_valid (`np.ndarray`, *optional*): `[S]` booleans: the segment's frames were decoded. `False` where
            the stream ended (a truncated file), began later, or could not be decoded there; such a segment holds
            placeholder frames and must be masked. All `True` when not given.
        audio_valid (`np.ndarray`, *optional*): the same for the audio.
        window (`tuple[int, int, int]`, *optional*): `(top, left, size)`: the square of the decoded frames that
            `frames` holds, when a `window` was asked of `read_segments`; `None` when `frames` are whole.
    """

    frames: np.ndarray | None
    waveform: np.ndarray | None
    video_valid: np.ndarray | None = None
    audio_valid: np.ndarray | None = None
    window: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.frames is not None and self.video_valid is None:
            self.video_valid = np.ones(len(self.frames), dtype=bool)
        if self.waveform is not None and self.audio_valid is None:
            self.audio_valid = np.ones(len(self.waveform), dtype=bool)


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


def _rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """Turns a decoded `[H, W, 3]` image the way its display matrix says: `degrees` counter-clockwise (the value
    `VideoFrame.rotation` reads from the matrix; phones record portrait video as rotated landscape)."""
    turns = round(degrees / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _covered(times: np.ndarray, first: float, end: float, tolerance: float) -> np.ndarray:
    """Which sampling times fall within the decoded range `[first, end)`."""
    return (times >= first - tolerance) & (times < end)


class _DecoderCursor:
    """Where one stream's decoder stands between groups of segments, and the choice of how to reach the next group:
    seek (the demuxer lands on the keyframe at or before the group, and everything from there to the group is decoded
    and thrown away) or decode on through the gap from where the last group stopped. A seek re-decodes on average half
    a keyframe interval; decoding on costs the gap. Keyframe intervals are not in any index PyAV exposes, so they are
    learned while decoding: the longest stretch seen from a keyframe to a later frame is a lower bound of the stream's
    interval. A long-GOP source (camera or encoder defaults: 8 s at 30 fps for x264) then decodes a clip read at
    paper settings in one pass instead of one pass per segment, while a prepared shard (a keyframe every 8 frames)
    keeps seeking.

    Decoding on gives the frames a seek would, because the pictures at and after the group's start decode the same
    from either point, and the frame the last group stopped at (the first past its times, not used by it) is handed
    out again first. It is used only where that is sure to hold: the frame has a believable time at or before the
    group's start, no packet has been rejected since the last seek (a seek past damage recovers at the next
    keyframe; decoding on would carry the damage), and no frame without a time has been seen (those are placed by
    their count from the group's start).
    """

    def __init__(self, clip: MediaClip, stream: av.stream.Stream, decode_through_gaps: bool = True):
        self.clip, self.stream, self.decode_through_gaps = clip, stream, decode_through_gaps
        self.seeks = 0
        self.keyframe_interval = 0.0
        self._pass: Iterator[av.frame.Frame] | None = None  # the decoding pass under way; None when it ended
        self._held: av.frame.Frame | None = None  # the last frame handed out
        self._last_keyframe: float | None = None
        self._rejected_at_seek = 0
        self._untimed_seen = False

    def frames(self, start: float, tolerance: float) -> Iterator[av.frame.Frame]:
        """Decoded frames from at or before `start` on, from the cheaper of a seek and the pass under way."""
        if self._continues_to(start):
            yield self._held
        else:
            self.seeks += 1
            self._rejected_at_seek = self._rejected()
            self._last_keyframe = None
            self._pass = self.clip._frames_from(self.stream, start, tolerance)
        # A plain loop, not `yield from`: a caller that stops early closes this generator, and the pass must survive.
        for frame in self._pass:
            self._note(frame)
            self._held = frame
            yield frame
        self._pass = self._held = None

    def _rejected(self) -> int:
        return self.clip._bad_packets.get(self.stream.index, 0)

    def _note(self, frame: av.frame.Frame) -> None:
        time = self.clip._time(frame)
        if time is None:
            self._untimed_seen = True
            return
        if self._last_keyframe is not None:
            self.keyframe_interval = max(self.keyframe_interval, time - self._last_keyframe)
        if frame.key_frame:
            self._last_keyframe = time

    def _continues_to(self, start: float) -> bool:
        if not self.decode_through_gaps or self._pass is None or self._held is None or self._untimed_seen:
            return False
        if self._rejected() != self._rejected_at_seek:
            return False
        time = self.clip._time(self._held)
        if time is None or time > start:
            return False
        return start - time <= max(_MERGE_GAP_SECONDS, self.keyframe_interval / 2)


class MediaClip:
    """A media file opened with PyAV; use [`open_media`] to build one.

    Decoding degrades rather than fails: a packet the decoder rejects costs that packet, a stream that cannot be
    decoded at all costs that stream (its segments are marked invalid and a warning is logged), and segments the
    decoded data do not reach (past the end of a truncated file, before a stream's late start) are marked invalid
    rather than filled with held frames or silence passed off as real. Only when no segment of any stream decodes
    is the clip an error.

    Attributes:
        name (`str`): the path, or a description of the source, used in error messages.
        duration (`float`): seconds, the longer of the video and audio streams.
        has_video (`bool`), has_audio (`bool`): which streams exist.
        decode_through_gaps (`bool`): choose between seeking to each group of segments and decoding on through the gap
            by what each costs (see `_DecoderCursor`); `False` seeks to every group (the frames are the same).
        video_seeks (`int`): seeks the last `read_segments` made in the video stream.
    """

    decode_through_gaps = True
    video_seeks = 0

    def __init__(self, container: av.container.InputContainer, name: str, decoder_threads: int | None = None):
        self.container = container
        self.name = name
        self.video_stream = container.streams.video[0] if container.streams.video else None
        self.audio_stream = container.streams.audio[0] if container.streams.audio else None
        if self.video_stream is None and self.audio_stream is None:
            raise MediaDecodeError(f"{name}: no video or audio stream in the file.")
        if self.video_stream is not None:
            # Set once, before the codec opens: PyAV refuses it afterwards (a second read would fail).
            if decoder_threads is None:
                self.video_stream.thread_type = "AUTO"
            else:
                self.video_stream.thread_count = decoder_threads
        # Both streams are measured from the container's start so that audio and video stay aligned.
        self.origin = (container.start_time or 0) / av.time_base
        self.duration = self._duration()
        # One converter for all frames: `VideoFrame.to_ndarray(format=...)` builds a new libswscale context per
        # frame, which costs 10x the conversion itself at the ~160-pixel sizes of prepared clips. It converts on
        # the calling thread (see `_to_rgb`).
        self._reformatter = av.video.reformatter.VideoReformatter()
        self._bad_packets: dict[int, int] = {}
        self._choose_window: WindowChooser | None = None
        self._window: tuple[int, int, int] | None = None

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
        except _DECODER_ERRORS as err:
            if last == 0.0:
                raise MediaDecodeError(f"{self.name}: cannot read the file to find its duration ({err}).") from err
        self._seek_to_start()
        return last

    def read_segments(
        self,
        starts: Sequence[float],
        timing: SegmentTiming,
        max_short_side: int | None = None,
        window: WindowChooser | None = None,
        on_video_group: VideoGroupCallback | None = None,
    ) -> DecodedSegments:
        """Decodes the frames and audio of segments starting at `starts` (seconds).

        `max_short_side`: frames with a longer short side are converted to RGB at that short side by libswscale
        (area filter) while decoding. Converting a 720p frame costs more than decoding it; the frames PEMT needs are
        ~128 pixels, so this saves most of the time and memory. Callers then crop and resize in torch as usual.

        `window`: called once, with `(height, width)` of the first decoded frame (after that scaling and its
        rotation), it returns the square `(top, left, size)` of the frames to keep; `frames` then hold only that
        square (`[S, F, size, size, 3]`) and `window` of the result says which it is. A training crop chosen this
        way copies a fraction of each frame instead of all of it (`None` in the result when no frame decoded).

        `on_video_group`: called as `on_video_group(indices, frames, valid)` as soon as the video of a group of
        segments is decoded (`indices` into `starts`; `frames` `[len(indices), F, H, W, 3]`; `valid` their flags), so
        that a caller can work on them while the rest decodes. Groups where nothing decodes are not reported; their
        segments stay invalid.

        Raises:
            [`MediaDecodeError`]: nothing of the clip decodes, or the file cannot be read; the message names it.
        """
        try:
            self._choose_window, self._window = window, None
            frames, video_valid = (
                self._read_video(starts, timing, max_short_side, on_video_group) if self.has_video else (None, None)
            )
            waveform, audio_valid = self._read_audio(starts, timing) if self.has_audio else (None, None)
        except MediaDecodeError:
            raise
        except _DECODER_ERRORS as err:
            raise MediaDecodeError(f"{self.name}: cannot be decoded ({type(err).__name__}: {err}).") from err
        decoded = DecodedSegments(frames, waveform, video_valid, audio_valid, self._window)
        found = [v for v in (video_valid, audio_valid) if v is not None]
        if not any(v.any() for v in found):
            raise MediaDecodeError(
                f"{self.name}: no segment could be decoded (the file is broken or truncated before the first segment)."
            )
        for kind, stream, valid in (("video", self.video_stream, video_valid), ("audio", self.audio_stream, audio_valid)):
            if valid is not None and not valid.all():
                bad = self._bad_packets.get(stream.index, 0)
                logger.warning(
                    "%s: %d of %d %s segment(s) could not be decoded and are masked%s.",
                    self.name, int((~valid).sum()), len(valid), kind,
                    f" ({bad} packet(s) rejected by the decoder)" if bad else " (past the decodable end of the stream)",
                )
        return decoded

    def _seek_to_start(self) -> None:
        try:
            self.container.seek(0)
        except _DECODER_ERRORS as err:
            raise MediaDecodeError(f"{self.name}: cannot seek in the file ({type(err).__name__}: {err}).") from err

    def _seek(self, stream: av.stream.Stream, seconds: float) -> None:
        target = int((seconds + self.origin) / stream.time_base)
        try:
            self.container.seek(max(target, 0), stream=stream, backward=True, any_frame=False)
        except _DECODER_ERRORS:
            # Unseekable input (e.g. a pipe-like stream): decode from the start instead.
            self._seek_to_start()

    def _packets_decoded(self, stream: av.stream.Stream) -> Iterator[av.frame.Frame]:
        """Frames of `stream` from the current position. A packet the decoder rejects is skipped (as FFmpeg's own
        tools do); the stream ends early where demuxing fails (a cut file) or after many rejected packets in a
        row (a stream that cannot be decoded)."""
        packets = self.container.demux(stream)
        rejected_in_a_row = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except _DECODER_ERRORS:
                return
            try:
                frames = packet.decode()
            except _DECODER_ERRORS:
                self._bad_packets[stream.index] = self._bad_packets.get(stream.index, 0) + 1
                rejected_in_a_row += 1
                if rejected_in_a_row > _MAX_REJECTED_PACKETS_IN_A_ROW:
                    return
                continue
            rejected_in_a_row = 0
            yield from frames

    def _time(self, frame: av.frame.Frame) -> float | None:
        """Seconds from the clip's start; `None` when unknown or implausible: MPEG-TS timestamps are 33 bits, and
        an AAC priming frame with a negative time shows up wrapped, 26.5 hours later."""
        if frame.time is None:
            return None
        time = frame.time - self.origin
        return time if -_TIME_SLACK_SECONDS <= time <= self.duration + _TIME_SLACK_SECONDS else None

    def _frames_from(self, stream: av.stream.Stream, start: float, tolerance: float) -> Iterator[av.frame.Frame]:
        """Decoded frames from the last keyframe at or before `start`. Some formats (MPEG-TS) have no index: a seek
        there lands near the time asked for but not on a keyframe, and the decoder then drops every frame up to
        the next keyframe, possibly to the end of the file. When the first frame comes later than `start`, the
        seek is retried from further back (1, 2, 4, ... seconds) until the stream's beginning. Leading frames
        without a believable time are dropped: they cannot be placed."""
        back = 0.0
        while True:
            target = max(start - back, 0.0)
            self._seek(stream, target)
            frames = self._packets_decoded(stream)
            first = None
            for skipped, frame in enumerate(frames):
                if self._time(frame) is not None or skipped >= _UNTIMED_FRAMES_SKIPPED:
                    first = frame
                    break
            if first is not None:
                time = self._time(first)
                if time is None or time <= start + tolerance or target == 0.0:
                    yield first
                    yield from frames
                    return
            elif target == 0.0:
                return
            back = max(2 * back, 1.0)

    def _read_video(
        self,
        starts: Sequence[float],
        timing: SegmentTiming,
        max_short_side: int | None,
        on_video_group: VideoGroupCallback | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        interval = 1.0 / float(self.video_stream.average_rate or 30)
        valid = np.zeros(len(starts), dtype=bool)
        out = None
        self._frame_size = None
        self._video_cursor = _DecoderCursor(self, self.video_stream, self.decode_through_gaps)
        for group_start, _, members in _merge_spans(starts, timing.span):
            wanted = np.unique(np.concatenate([timing.frame_times(starts[i]) for i in members]))
            picked, (first, end) = self._pick_frames(group_start, wanted, max_short_side, interval)
            if picked is None:
                continue  # nothing decodes here: these segments stay invalid
            if out is None:
                out = np.zeros((len(starts), timing.frames_per_segment, *picked[0].shape), dtype=np.uint8)
            for i in members:
                times = timing.frame_times(starts[i])
                for k, t in enumerate(np.searchsorted(wanted, times)):
                    out[i, k] = picked[t]
                # Real when at least half of the frames the clip's length allows were decoded, not held.
                expected = max(int((times < max(self.duration, interval)).sum()), 1)
                valid[i] = _covered(times, first, end, interval).sum() >= max(1, expected / 2)
            if on_video_group is not None:
                on_video_group(members, out[members], valid[members])
        self.video_seeks, self._video_cursor = self._video_cursor.seeks, None
        if out is None:
            side = max_short_side or 16
            out = np.zeros((len(starts), timing.frames_per_segment, side, side, 3), dtype=np.uint8)
        return out, valid

    def _to_rgb(self, frame: av.VideoFrame, max_short_side: int | None) -> np.ndarray:
        if self._frame_size is None:
            # The first frame decides the size: a stream that changes resolution midway is scaled to it.
            width, height = frame.width, frame.height
            if max_short_side is not None and min(width, height) > max_short_side:
                # The same rounding as `PemtVideoProcessor.resize_short_side`, whose resize then has nothing to do.
                scale = max_short_side / min(width, height)
                width, height = max(max_short_side, round(width * scale)), max(max_short_side, round(height * scale))
            self._frame_size = (width, height)
        width, height = self._frame_size
        # `threads=1`: libswscale's default (one thread per CPU) spends 2-6x the conversion's own CPU time in its
        # worker threads on frames this small, and at 720p saves only ~0.1 ms of wall time per frame; data-loader
        # workers and the pipeline's decoding thread are the parallelism instead (bench_data.py).
        if (width, height) == (frame.width, frame.height):
            image = self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        else:
            image = self._reformatter.reformat(
                frame, format="rgb24", width=width, height=height, interpolation="AREA", threads=1
            ).to_ndarray()
        image = _rotate(image, frame.rotation)
        if self._choose_window is None:
            return image
        if self._window is None:
            self._window = self._choose_window(*image.shape[:2])
        top, left, size = self._window
        return image[top : top + size, left : left + size]

    def _pick_frames(
        self, group_start: float, wanted: np.ndarray, max_short_side: int | None, interval: float
    ) -> tuple[list[np.ndarray] | None, tuple[float, float]]:
        """For each wanted time, the last decoded frame at or before it (the first frame if none is), and the
        range `[first, end)` of times the decoded frames cover; `(None, ...)` when no frame decodes."""
        picked: list[np.ndarray] = []
        previous, previous_array = None, None
        first = end = 0.0
        position = 0
        for index, frame in enumerate(self._video_cursor.frames(group_start, interval)):
            time = self._time(frame)
            time = time if time is not None else group_start + index * interval
            if previous is None:
                # Times before the first decoded frame take that frame (and do not count as decoded).
                previous, first = frame, time
            end = time + (float(frame.duration * frame.time_base) if frame.duration else interval)
            while position < len(wanted) and wanted[position] < time - 1e-6:
                if previous_array is None:
                    previous_array = self._to_rgb(previous, max_short_side)
                picked.append(previous_array)
                position += 1
            if position == len(wanted):
                end = float("inf")
                break
            if previous is not frame:
                previous, previous_array = frame, None
        if previous is None:
            return None, (0.0, 0.0)
        if position < len(wanted):
            # Past the end of the stream: the last frame is held (and the range says these times were not decoded).
            last = previous_array if previous_array is not None else self._to_rgb(previous, max_short_side)
            picked.extend([last] * (len(wanted) - position))
        return picked, (first, end)

    def _read_audio(self, starts: Sequence[float], timing: SegmentTiming) -> tuple[np.ndarray, np.ndarray]:
        rate = timing.audio_sampling_rate
        out = np.zeros((len(starts), timing.audio_samples), dtype=np.float32)
        valid = np.zeros(len(starts), dtype=bool)
        for group_start, group_end, members in _merge_spans(starts, timing.span):
            samples, first_time = self._decode_audio_span(group_start, group_end, rate)
            if first_time is None:
                continue
            decoded_end = first_time + len(samples) / rate
            for i in members:
                offset = round((starts[i] - first_time) * rate)
                source_from, target_from = max(offset, 0), max(-offset, 0)
                chunk = samples[source_from : source_from + timing.audio_samples - target_from]
                out[i, target_from : target_from + len(chunk)] = chunk
                # Real when at least half of what the clip's length allows was decoded (not padding silence).
                expected = max(min(starts[i] + timing.span, self.duration) - starts[i], 1.0 / rate)
                overlap = min(decoded_end, starts[i] + timing.span) - max(first_time, starts[i])
                valid[i] = overlap > 0 and overlap >= expected / 2
        return out, valid

    def _decode_audio_span(self, start: float, end: float, rate: int) -> tuple[np.ndarray, float | None]:
        """Mono samples at `rate` from the frame at or before `start` to past `end`, and the time of the first
        (`None` when nothing decodes). A gap left by a rejected packet is filled with silence so that later
        samples keep their times."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        first_time, expected_next, produced = None, None, 0
        for frame in self._frames_from(self.audio_stream, start, tolerance=0.1):
            time = self._time(frame)
            if first_time is None and time is not None and time + frame.samples / frame.sample_rate < start - 0.5:
                continue  # a seek that landed far too early (MPEG-TS): what lies before the span is not kept
            if first_time is None:
                first_time = expected_next = time if time is not None else start
            if time is not None and time - expected_next > 1.5 * frame.samples / frame.sample_rate:
                missing = round((time - first_time) * rate) - produced
                if missing > 0:
                    chunks.append(np.zeros(missing, dtype=np.float32))
                    produced += missing
            if _already_resampled(frame, rate):
                pieces = [frame]
            else:
                try:
                    pieces = resampler.resample(frame)
                except ValueError:
                    # The stream's format changed midway; a new resampler takes it from here.
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
                    pieces = resampler.resample(frame)
            for out in pieces:
                chunks.append(_mono_samples(out))
                produced += chunks[-1].size
            expected_next = (time if time is not None else expected_next) + frame.samples / frame.sample_rate
            if time is not None and time > end:
                break
        for out in resampler.resample(None):
            chunks.append(_mono_samples(out))
        if first_time is None or not chunks:
            return np.zeros(0, dtype=np.float32), None
        return np.concatenate(chunks).astype(np.float32, copy=False), first_time


def _mono_samples(frame: av.AudioFrame) -> np.ndarray:
    """The samples of a mono float frame, without a copy: `to_ndarray` stacks planes through NumPy, which costs
    as much as decoding the frame (the data are copied once, when the span's frames are joined)."""
    return np.frombuffer(frame.planes[0], dtype=np.float32, count=frame.samples)


def _already_resampled(frame: av.AudioFrame, rate: int) -> bool:
    """Whether a frame is mono float at `rate` already (a prepared clip's audio): the resampler would only copy
    it, at about half the cost of decoding it."""
    return frame.sample_rate == rate and frame.layout.name == "mono" and frame.format.name in ("flt", "fltp")


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
            if not self.video_fps > 0:
                raise MediaDecodeError(f"{name}: video_fps must be positive; got {data['video_fps']!r}.")
            if self.frames.dtype.kind == "f" and not np.isfinite(self.frames).all():
                raise MediaDecodeError(f"{name}: frames hold NaN or infinite values.")
        waveform = data.get("waveform")
        self.waveform = None
        if waveform is not None and np.size(waveform) > 0:
            if "sampling_rate" not in data:
                raise MediaDecodeError(f"{name}: a waveform is given without 'sampling_rate'.")
            waveform = np.asarray(waveform, dtype=np.float32)
            self.waveform = waveform.mean(axis=0) if waveform.ndim == 2 else waveform
            if not np.isfinite(self.waveform).all():
                raise MediaDecodeError(f"{name}: the waveform holds NaN or infinite values.")
            self.sampling_rate = int(data["sampling_rate"])
            if self.sampling_rate <= 0:
                raise MediaDecodeError(f"{name}: sampling_rate must be positive; got {data['sampling_rate']!r}.")
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
        self,
        starts: Sequence[float],
        timing: SegmentTiming,
        max_short_side: int | None = None,
        window: WindowChooser | None = None,
    ) -> DecodedSegments:
        """Frames and audio of segments starting at `starts`; `max_short_side` is ignored (resizing is torch's);
        `window` as for [`MediaClip.read_segments`]."""
        frames = waveform = video_valid = audio_valid = box = None
        if self.frames is not None:
            times = np.stack([timing.frame_times(s) for s in starts])
            # Nearest-earlier frame, as for files; a small tolerance keeps exact multiples from rounding down.
            position = np.floor(times * self.video_fps + 1e-6).astype(int)
            source = self.frames
            if window is not None:
                box = window(*source.shape[1:3])
                top, left, size = box
                source = source[:, top : top + size, left : left + size]
            frames = source[np.clip(position, 0, len(self.frames) - 1)]
            # As for files: real when at least half of the frames the arrays' length allows exist (not held).
            expected = np.maximum((times < self.duration).sum(axis=1), 1)
            video_valid = (position < len(self.frames)).sum(axis=1) >= np.maximum(1, expected / 2)
        if self.waveform is not None:
            resampled = _resample(self.waveform, self.sampling_rate, timing.audio_sampling_rate)
            waveform = np.zeros((len(starts), timing.audio_samples), dtype=np.float32)
            audio_valid = np.zeros(len(starts), dtype=bool)
            for i, s in enumerate(starts):
                begin = round(s * timing.audio_sampling_rate)
                chunk = resampled[begin : begin + timing.audio_samples]
                waveform[i, : len(chunk)] = chunk
                expected = min(timing.audio_samples, max(round(self.duration * timing.audio_sampling_rate) - begin, 1))
                audio_valid[i] = len(chunk) > 0 and len(chunk) >= expected / 2
        return DecodedSegments(frames, waveform, video_valid, audio_valid, box)


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


def open_media(source: VideoSource, decoder_threads: int | None = None) -> MediaClip | ArrayClip:
    """Opens a clip from a path, bytes, a binary file object, a `datasets` video value (`{"path", "bytes"}` or a
    torchcodec `VideoDecoder`), or a dict of decoded arrays (see [`ArrayClip`]).

    Args:
        source: the clip.
        decoder_threads (`int`, *optional*): threads FFmpeg decodes the video with. `None` lets FFmpeg choose (one
            per CPU, frame-parallel): the shortest wall time for one clip. `1` costs the least CPU per clip (15-25%
            less at paper settings), which is what counts where many clips decode in parallel, as in data-loader
            workers.

    Raises:
        [`MediaDecodeError`]: the source is empty, truncated, or not a media file; the message names it.
    """
    if isinstance(source, dict):
        if "frames" in source or "waveform" in source:
            return ArrayClip(source)
        if source.get("bytes") is not None:
            return _open_container(io.BytesIO(source["bytes"]), source.get("path") or "<bytes>", decoder_threads)
        if source.get("path") is not None:
            return open_media(source["path"], decoder_threads)
        raise MediaDecodeError(f"A video dict needs 'path', 'bytes', 'frames' or 'waveform'; got keys {list(source)}.")
    if type(source).__module__.startswith("torchcodec"):
        return _open_torchcodec(source, decoder_threads)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise MediaDecodeError(f"{path}: no such file.")
        if os.path.getsize(path) == 0:
            raise MediaDecodeError(f"{path}: the file is empty (0 bytes).")
        return _open_container(path, path, decoder_threads)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaDecodeError("<bytes>: the data is empty (0 bytes).")
        return _open_container(io.BytesIO(bytes(source)), "<bytes>", decoder_threads)
    if hasattr(source, "read"):
        return _open_container(source, str(getattr(source, "name", "<file object>")), decoder_threads)
    raise MediaDecodeError(f"Cannot read a video from a {type(source).__name__}.")


def _open_container(file: str | BinaryIO, name: str, decoder_threads: int | None = None) -> MediaClip:
    try:
        container = av.open(file, mode="r")
    except _DECODER_ERRORS as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise MediaDecodeError(f"{name}: not a readable media file, or truncated ({type(err).__name__}: {reason}).") from err
    try:
        return MediaClip(container, name, decoder_threads)
    except _DECODER_ERRORS as err:
        container.close()
        raise MediaDecodeError(f"{name}: cannot be read ({type(err).__name__}: {err}).") from err
    except BaseException:
        container.close()
        raise


def _open_torchcodec(decoder: Any, decoder_threads: int | None = None) -> MediaClip | ArrayClip:
    """`datasets` keeps the encoded source on its torchcodec decoders; frames are read through the API otherwise."""
    encoded = getattr(decoder, "_hf_encoded", None)
    if encoded and (encoded.get("bytes") is not None or encoded.get("path") is not None):
        return open_media(encoded, decoder_threads)
    path = getattr(decoder.metadata, "path", None)
    if path:
        return open_media(path, decoder_threads)
    frames = decoder[0 : len(decoder)]
    frames = frames.data if hasattr(frames, "data") else frames
    array = frames.numpy()
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    return ArrayClip({"frames": array, "video_fps": decoder.metadata.average_fps}, name="<torchcodec decoder>")
