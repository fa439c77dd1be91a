"""The decoder degrades gracefully (issue 14, items 4-6 and rotation): a bad packet costs that packet, a broken
stream that stream, segments the data do not reach are masked, every PyAV error is a MediaDecodeError naming the
file."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from pemt import PemtConfig, PemtProcessor
from pemt.model.media_pemt import MediaDecodeError, SegmentTiming, _rotate, open_media
from tests.media_fixtures import write_media
from test_decoding import indices, source_index

CONFIG = PemtConfig.from_preset("tiny")
TIMING = SegmentTiming(CONFIG.frames_per_segment, CONFIG.frame_stride, CONFIG.video_fps, CONFIG.audio_sampling_rate)
PROCESSOR = PemtProcessor.from_model_config(CONFIG)


def corrupt_packets(path, stream: str, which: slice, seed: int = 0):
    """Overwrites the payload of some packets of a stream with noise (found by content, so any container works)."""
    with av.open(str(path)) as container:
        payloads = [bytes(p) for p in container.demux(**{stream: 0}) if p.size][which]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for payload in payloads:
        at = bytes(data).index(payload)
        data[at : at + len(payload)] = rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    broken = path.with_name("broken_" + path.name)
    broken.write_bytes(bytes(data))
    return broken


def tone_hz(waveform: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return np.argmax(spectrum) * TIMING.audio_sampling_rate / len(waveform)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_bad_first_audio_packet_costs_only_that_packet(tmp_path, suffix):
    # The Megamind.avi case: the first audio packet is rejected, FFmpeg decodes the rest.
    good = write_media(tmp_path / f"clip{suffix}", seconds=3.0, fps=10, size=(16, 16), sample_rate=8000)
    broken = corrupt_packets(good, "audio", slice(0, 1))
    with av.open(str(broken)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(audio=0):  # what aborted the clip before
            pass
    with open_media(broken) as clip:
        segments = clip.read_segments([0.0, 1.0, 2.2], TIMING)
    assert segments.audio_valid.tolist() == [True, True, True]
    for waveform in segments.waveform[1:]:
        assert tone_hz(waveform) == pytest.approx(440, abs=5) and np.abs(waveform).max() > 0.2
    inputs = PROCESSOR(videos=str(broken))
    assert inputs["audio_segment_mask"].tolist() == [[1, 1, 1]] and inputs["visual_segment_mask"].tolist() == [[1, 1, 1]]


def test_a_broken_stream_costs_only_that_stream(tmp_path, caplog):
    good = write_media(tmp_path / "clip.mkv", seconds=3.0, fps=10, size=(16, 16), sample_rate=8000)
    broken = corrupt_packets(good, "audio", slice(None))
    with caplog.at_level(logging.WARNING):
        inputs = PROCESSOR(videos=str(broken))
    assert inputs["visual_segment_mask"].tolist() == [[1, 1, 1]] and inputs["audio_segment_mask"].tolist() == [[0, 0, 0]]
    assert float(inputs["audio_values"].abs().max()) == 0.0
    assert any(str(broken) in r.getMessage() and "audio" in r.getMessage() for r in caplog.records)
    # Negative control: the intact file keeps its audio.
    assert PROCESSOR(videos=str(good))["audio_segment_mask"].tolist() == [[1, 1, 1]]
    # Both streams broken: nothing is left, which is an error naming the file.
    both = corrupt_packets(broken, "video", slice(None))
    with pytest.raises(MediaDecodeError, match="no segment could be decoded") as info:
        PROCESSOR(videos=str(both))
    assert str(both) in str(info.value)


def test_segments_past_a_truncated_end_are_masked_in_both_streams(tmp_path):
    good = write_media(tmp_path / "clip.mkv", seconds=6.0, fps=10, size=(16, 16), sample_rate=8000)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.45)])
    inputs = PROCESSOR(videos=str(cut))  # segments start at 0, 2.6 and 5.2 s; the cut is near 2.7 s
    assert inputs["visual_segment_mask"].tolist() == [[1, 0, 0]] and inputs["audio_segment_mask"].tolist() == [[1, 0, 0]]
    assert float(inputs["pixel_values"][0, 1:].abs().max()) == 0.0
    assert PROCESSOR(videos=str(good))["visual_segment_mask"].tolist() == [[1, 1, 1]]


def test_audio_starting_late_masks_the_silent_leading_segment(tmp_path):
    late = write_media(tmp_path / "late.mkv", seconds=4.0, fps=10, size=(16, 16), sample_rate=8000, audio_start=1.5)
    with open_media(late) as clip:
        segments = clip.read_segments([0.0, 2.0, 3.2], TIMING)
    assert segments.audio_valid.tolist() == [False, True, True]
    assert segments.video_valid.tolist() == [True, True, True]
    assert np.abs(segments.waveform[0]).max() == 0.0
    # The audio keeps its place in time: the tone of the segment at 2.0 s is the source's (no shift by 1.5 s).
    assert tone_hz(segments.waveform[1]) == pytest.approx(440, abs=5)


def test_mpeg_ts_segments_near_the_end(tmp_path):
    # MPEG-TS has no index: a seek lands short of a keyframe and the decoder drops frames up to the next one.
    path = write_media(tmp_path / "clip.ts", seconds=12.0, fps=25, size=(32, 48), sample_rate=8000)
    with open_media(path) as clip:
        starts = [0.0, clip.duration - 0.9, clip.duration - 0.8]
        segments = clip.read_segments(starts, TIMING)
    assert segments.video_valid.all() and segments.audio_valid.all()
    for s, start in enumerate(starts):
        assert [source_index(f) for f in segments.frames[s]] == indices(TIMING.frame_times(start), 25)
        assert tone_hz(segments.waveform[s]) == pytest.approx(440, abs=5)
    assert PROCESSOR(videos=str(path))["visual_segment_mask"].tolist() == [[1, 1, 1]]


def test_a_clip_can_be_read_twice(tmp_path):
    path = write_media(tmp_path / "clip.mp4", seconds=3.0, fps=10, size=(16, 16), sample_rate=8000)
    with open_media(path) as clip:
        first = clip.read_segments([0.5], TIMING)
        again = clip.read_segments([0.5], TIMING)
    np.testing.assert_array_equal(first.frames, again.frames)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_rotation_metadata_is_applied(tmp_path, suffix):
    # Frame 0 of the pattern has a red bar over the 8 leftmost columns; turned 90 degrees counter-clockwise, the
    # left edge becomes the bottom edge of a portrait picture.
    path = write_media(tmp_path / f"portrait{suffix}", seconds=1.0, fps=10, size=(16, 32), sample_rate=None, rotation=90)
    with open_media(path) as clip:
        frame = clip.read_segments([0.0], TIMING).frames[0, 0]
    assert frame.shape == (32, 16, 3)
    assert frame[-6:, :, 0].mean() > 200 and frame[:20, :, 0].mean() < 150
    upright = write_media(tmp_path / f"landscape{suffix}", seconds=1.0, fps=10, size=(16, 32), sample_rate=None)
    with open_media(upright) as clip:
        assert clip.read_segments([0.0], TIMING).frames.shape[2:4] == (16, 32)


def test_rotate_follows_the_display_matrix_convention():
    image = np.arange(6).reshape(2, 3)[..., None]
    # Counter-clockwise: the right column becomes the top row.
    assert _rotate(image, 90)[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]
    assert _rotate(image, -90)[..., 0].tolist() == [[3, 0], [4, 1], [5, 2]]
    assert _rotate(image, 180)[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    assert _rotate(image, 0) is image


def test_metadata_that_is_not_utf8_is_our_error_naming_the_file(tmp_path):
    path = tmp_path / "titled.mkv"
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "QQQQQQQQ"
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for _ in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    bad = tmp_path / "bad_title.mkv"
    bad.write_bytes(path.read_bytes().replace(b"QQQQQQQQ", b"\xff\xfe\xc3QQQQQ"))
    with pytest.raises(MediaDecodeError) as info:
        open_media(bad)
    assert str(bad) in str(info.value) and "UnicodeDecodeError" in str(info.value)


class UnseekableContainer:
    """A container whose every seek fails as PyAV's does on some damaged inputs."""

    def __init__(self, container):
        self.container = container

    def __getattr__(self, name):
        return getattr(self.container, name)

    def seek(self, *args, **kwargs):
        raise av.error.PermissionError(1, "Operation not permitted")


def test_a_failing_fallback_seek_is_our_error_naming_the_file(tmp_path):
    path = write_media(tmp_path / "clip.mp4", seconds=3.0, fps=10, size=(16, 16), sample_rate=8000)
    with open_media(path) as clip:
        clip.container = UnseekableContainer(clip.container)
        with pytest.raises(MediaDecodeError, match="PermissionError") as info:
            clip.read_segments([1.0], TIMING)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["frames", "waveform"])
def test_non_finite_arrays_are_rejected(key):
    frames = np.full((20, 8, 8, 3), 0.5, dtype=np.float32)
    waveform = np.zeros(16000, dtype=np.float32)
    data = {"frames": frames, "video_fps": 10, "waveform": waveform, "sampling_rate": 8000}
    data[key] = data[key].copy()
    data[key].reshape(-1)[3] = np.nan
    with pytest.raises(MediaDecodeError, match="NaN or infinite"):
        open_media(data)


def test_arrays_shorter_than_the_segments_are_masked_past_their_end():
    frames = np.full((12, 8, 8, 3), 100, dtype=np.uint8)  # 1.2 s at 10 fps
    clip = open_media({"frames": frames, "video_fps": 10, "waveform": np.ones(8000, np.float32), "sampling_rate": 8000})
    segments = clip.read_segments([0.0, 0.6, 2.0], TIMING)
    assert segments.video_valid.tolist() == [True, True, False]
    assert segments.audio_valid.tolist() == [True, True, False]
