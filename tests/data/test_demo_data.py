"""Tests of the synthetic demo data: layout, decodability, determinism, and that its content
carries the audio-visual link and the class signal the model's tests rely on."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import av
import numpy as np
import pytest

from pemt.data.demo import CLASSES, main, make_demo_data

SECONDS, FPS, SR, SIZE = 2.0, 15, 16000, 64
KWARGS = dict(
    num_classes=4, train_per_class=4, test_per_class=2, seconds=SECONDS, fps=FPS, sampling_rate=SR, size=SIZE
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=3, **KWARGS)


@functools.cache
def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (F, H, W, 3) uint8 and the mono waveform, from the mp4 file (cached: several
    tests read the same clips)."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio[0]


def _clips(root: Path, split: str) -> list[tuple[Path, int]]:
    info = json.loads((root / "info.json").read_text())
    return [(root / c["file_name"], c["label"]) for c in info["clips"] if c["split"] == split]


def _shape_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: shape mask (saturated pixels: the background is grey), hue and brightness."""
    rgb = frames.astype(np.float32) / 255.0
    hi, lo = rgb.max(-1), rgb.min(-1)
    mask = hi - lo > 0.25
    # Hue from the two non-zero channels of a fully saturated colour.
    r, g, b = np.moveaxis(rgb, -1, 0)
    hue = (np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b) / (2 * np.pi)) % 1.0
    # Hues near 1 can only be compression noise around red: the generator stops at 0.85.
    hue = np.where(hue > 0.95, hue - 1.0, hue)
    n = mask.sum((1, 2))
    return mask, (hue * mask).sum((1, 2)) / n, (hi * mask).sum((1, 2)) / n


def _frame_audio(audio: np.ndarray, n_frames: int) -> np.ndarray:
    hop = SR // FPS
    return audio[: n_frames * hop].reshape(n_frames, hop)


def test_layout_and_info(demo: Path) -> None:
    info = json.loads((demo / "info.json").read_text())
    names = sorted(c.name for c in CLASSES[:4])
    assert [c["name"] for c in info["classes"]] == names
    assert "rule" in info and info["seed"] == 3
    for split, per_class in (("train", 4), ("test", 2)):
        assert sorted(p.name for p in (demo / split).iterdir()) == sorted(names)
        for name in names:
            assert len(list((demo / split / name).glob("*.mp4"))) == per_class
    assert len(info["clips"]) == 4 * 6
    assert all((demo / c["file_name"]).is_file() for c in info["clips"])


def test_files_decode_with_both_streams(demo: Path) -> None:
    for path in sorted(demo.glob("*/*/*.mp4")):
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            assert audio.codec_context.sample_rate == SR and audio.codec_context.layout.nb_channels == 1
        frames, wave = _decode(path)
        assert frames.shape == (int(SECONDS * FPS), SIZE, SIZE, 3)
        # AAC pads the end up to a whole 1024-sample frame.
        assert SECONDS * SR <= wave.size < SECONDS * SR + 1024
        assert 0.3 < np.abs(wave).max() < 1.0


def test_same_seed_same_bytes_other_seed_differs(demo: Path, tmp_path: Path) -> None:
    kwargs = {**KWARGS, "train_per_class": 1, "test_per_class": 0}
    again = make_demo_data(tmp_path / "again", seed=3, workers=2, **kwargs)
    other = make_demo_data(tmp_path / "other", seed=4, **kwargs)
    for path in sorted(again.glob("train/*/*.mp4")):
        relative = path.relative_to(again)
        # Each clip has its own random stream, so fewer clips per class leave clip 000 as it was.
        assert path.read_bytes() == (demo / relative).read_bytes()
        assert path.read_bytes() != (other / relative).read_bytes()


def test_flashes_follow_beeps_and_hue_follows_pitch(demo: Path) -> None:
    clip_hue, clip_pitch = [], []
    for path, _ in _clips(demo, "train") + _clips(demo, "test"):
        frames, wave = _decode(path)
        _, hue, brightness = _shape_features(frames)
        chunks = _frame_audio(wave, len(frames))
        loudness = np.sqrt((chunks**2).mean(1))
        # Onsets and flashes coincide: brightness tracks the loudness of the frame's audio.
        assert np.corrcoef(loudness, brightness)[0, 1] > 0.8, path.name
        spectrum = np.abs(np.fft.rfft(chunks * np.hanning(chunks.shape[1]), axis=1))
        peak_hz = np.fft.rfftfreq(chunks.shape[1], 1 / SR)[1:][spectrum[:, 1:].argmax(1)]
        clip_hue.append(np.median(hue))
        clip_pitch.append(np.median(np.log2(peak_hz)))
    # Across clips, the picture's hue tells the pitch of the sound.
    assert np.corrcoef(clip_hue, clip_pitch)[0, 1] > 0.9


def _visual_class_feature(frames: np.ndarray) -> np.ndarray:
    """Fill of the shape's bounding box, and edge densities across rows and across columns."""
    mask, _, _ = _shape_features(frames)
    fill, across_rows, across_cols = [], [], []
    for m in mask:
        ys, xs = np.nonzero(m)
        box = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        fill.append(box.mean())
        across_rows.append(np.abs(np.diff(box.astype(int), axis=0)).mean())
        across_cols.append(np.abs(np.diff(box.astype(int), axis=1)).mean())
    return np.array([np.median(fill), np.median(across_rows), np.median(across_cols)])


def _audio_class_feature(wave: np.ndarray) -> np.ndarray:
    """Spectral flatness, energy at 3x the peak frequency, and how far the peak moves per frame."""
    frames = _frame_audio(wave, int(wave.size * FPS / SR))
    power = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), axis=1)) ** 2 + 1e-12
    flatness = np.exp(np.log(power).mean(1)) / power.mean(1)
    peak = power[:, 1:].argmax(1) + 1
    rows = np.arange(len(peak))[:, None]

    def around(k: int) -> np.ndarray:
        return power[rows, np.clip(k * peak[:, None] + np.arange(-2, 3), 0, power.shape[1] - 1)].sum(1)

    third = np.median(around(3) / around(1))
    glide = np.median(np.abs(np.diff(np.log2(peak))))
    # Logs throughout: features spanning decades would otherwise swamp the others' scales.
    return np.array([np.log(np.median(flatness)), np.log(third), np.log(0.01 + glide)])


@pytest.mark.parametrize("feature", ["visual", "audio"])
def test_class_is_predictable_from_a_simple_feature(demo: Path, feature: str) -> None:
    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for path, label in _clips(demo, split):
            frames, wave = _decode(path)
            rows.append(_visual_class_feature(frames) if feature == "visual" else _audio_class_feature(wave))
            labels.append(label)
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    centroids = np.stack([((x_train - mean) / std)[y_train == c].mean(0) for c in range(4)])
    distances = ((((x_test - mean) / std)[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == y_test).mean() == 1.0


def test_main_writes_requested_counts(tmp_path: Path) -> None:
    main(
        [
            str(tmp_path),
            "--num-classes",
            "6",
            "--train-per-class",
            "1",
            "--test-per-class",
            "0",
            "--seconds",
            "1",
            "--workers",
            "1",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(c.name for c in CLASSES)
    assert not list((tmp_path / "test").rglob("*.mp4"))


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_demo_data(tmp_path, num_classes=len(CLASSES) + 1)
