"""Synthetic labelled audio-visual clips for the demo and the tests.

``make_demo_data`` writes a ``videofolder`` data set (``train/<class>/<clip>.mp4`` and
``test/<class>/<clip>.mp4``: H.264 video and mono AAC audio) plus ``info.json`` describing the
classes, the generative rule and every clip's parameters.

The generative rule is chosen so that everything PEMT learns has something to find at the
project's small input sizes (about 8 frames at 32x32, 40-bin log-mels at 16 kHz):

* Class = shape x timbre. Each class has its own shape (disk, square, stripes, checker, ring,
  cross) and its own timbre (sine, square wave, noise bursts, upward chirps, sawtooth,
  tremolo), so visual-only, audio-only and audio-visual classifiers can all learn it.
* Clip-specific sound-picture link. A clip draws a base pitch (log-uniform, about 2.6 octaves)
  and a rhythm (tempo, phase, dropped beats). The sound is a quiet drone at the base pitch plus
  loud beeps at the rhythm's onsets, each beep with its own pitch. The shape's hue is the
  loudness-weighted mean log-pitch of the audio during the frame, its brightness and size follow
  the audio loudness during the frame, so flashes coincide with beeps. Correct pair prediction
  can use both the pitch-hue and the onset-flash agreement.
* Variation within a clip: the shape drifts and bounces, and beeps change pitch and hue, so
  segments of one clip differ from each other (masked segment prediction needs that).

``make_relation_data`` (``pemt make-demo-data DIR --task relation``) writes a harder task on which
pretraining choices can matter: the class is the *relation* between sound and picture, not what
either shows. ``labelled/{train,test}/matched`` clips are made as above: the shape is the one the
demo pairs with the clip's timbre, and the picture follows the clip's own sound.
``labelled/{train,test}/unrelated`` clips show another timbre's shape, moving and flashing as
another, independent clip's sound would make it. Timbres are drawn uniformly, so each shape and
each timbre is equally likely in both classes and neither modality alone tells them apart. With
few labelled training clips per class (8 by default) a classifier cannot learn the 6 x 6 pairing
from labels alone; ``pretrain/{train,test}/unlabelled`` holds unlabelled matched clips, from which
correct pair prediction learns exactly that pairing.

``info.json`` is used instead of a ``metadata.jsonl`` because the ``datasets`` folder builders
stop inferring labels from directory names as soon as a metadata file is present.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = ["CLASSES", "RELATIONS", "ClassSpec", "ClipParams", "make_demo_data", "make_relation_data", "main"]


@dataclass(frozen=True)
class ClassSpec:
    """One class of the demo data: what it looks like and what it sounds like."""

    name: str
    shape: str
    timbre: str


CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("disk_sine", "disk", "sine"),
    ClassSpec("square_squarewave", "square", "squarewave"),
    ClassSpec("stripes_noise", "stripes", "noise"),
    ClassSpec("checker_chirp", "checker", "chirp"),
    ClassSpec("ring_sawtooth", "ring", "sawtooth"),
    ClassSpec("cross_tremolo", "cross", "tremolo"),
)

# Pitch range of the base (drone) pitch; beeps go up to half an octave either side and chirps
# one octave up, which keeps fundamentals below ~4.3 kHz, well inside a 16 kHz mel range.
MIN_PITCH_HZ = 250.0
MAX_PITCH_HZ = 1500.0
BEEP_OCTAVES = 0.5
CHIRP_OCTAVES = 1.0
# Hue stops short of 1 so that the lowest and highest pitches do not wrap to the same red.
# The hue scale spans the beep range; chirps, which go higher, saturate at the top hue.
MAX_HUE = 0.85
DRONE_LEVEL = 0.15
RAMP_S = 0.005  # fade of each beep, so onsets are sharp but click-free
TREMOLO_HZ = 12.0  # 5 hops of 256 samples per period at 16 kHz: visible in a log-mel
CHIRP_DRONE_VIBRATO_HZ = 5.0
CHIRP_DRONE_VIBRATO_OCTAVES = 0.15

_INFO_FILE = "info.json"


@dataclass(frozen=True)
class ClipParams:
    """The random draws that define one clip; stored in ``info.json``."""

    base_pitch_hz: float
    onsets_s: list[float]
    beep_pitches_hz: list[float]
    beep_s: float
    background: float
    radius: float
    start_xy: list[float]
    velocity_xy: list[float]


def _draw_clip(rng: np.random.Generator, seconds: float, size: int) -> ClipParams:
    base = float(np.exp(rng.uniform(np.log(MIN_PITCH_HZ), np.log(MAX_PITCH_HZ))))
    period = rng.uniform(0.3, 0.9)
    grid = np.arange(rng.uniform(0.0, period), seconds - 0.1, period)
    # Dropped beats make the rhythm irregular, hence clip-specific beyond its tempo; never two in
    # a row, so that no stretch longer than two periods (1.8 s) is silent apart from the drone.
    keep = rng.random(grid.size) < 0.75
    for i in range(1, grid.size):
        keep[i] |= not keep[i - 1]
    onsets = grid[keep]
    pitches = base * 2.0 ** rng.uniform(-BEEP_OCTAVES, BEEP_OCTAVES, onsets.size)
    # At least 0.1 s so that every beep spans a frame time even at 10 fps.
    beep = rng.uniform(0.1, min(0.25, 0.6 * period))
    # Shapes stay near the centre so that a crop of 80 % of the frame keeps them in view.
    radius = rng.uniform(0.19, 0.27) * size
    start = rng.uniform(0.35, 0.65, 2) * size
    velocity = rng.uniform(-0.12, 0.12, 2) * size
    return ClipParams(
        base_pitch_hz=base,
        onsets_s=[float(x) for x in onsets],
        beep_pitches_hz=[float(x) for x in pitches],
        beep_s=float(beep),
        background=float(rng.uniform(0.05, 0.2)),
        radius=float(radius),
        start_xy=[float(x) for x in start],
        velocity_xy=[float(x) for x in velocity],
    )


def _beep_state(p: ClipParams, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For times ``t``: the index of the beep sounding (or -1), its age, and its amplitude."""
    onsets = np.asarray(p.onsets_s)
    if onsets.size == 0:
        return np.full(t.shape, -1), np.zeros_like(t), np.zeros_like(t)
    idx = np.searchsorted(onsets, t, side="right") - 1
    age = t - onsets[np.maximum(idx, 0)]
    on = (idx >= 0) & (age < p.beep_s)
    ramp = np.clip(np.minimum(age, p.beep_s - age) / RAMP_S, 0.0, 1.0)
    return np.where(on, idx, -1), age, np.where(on, ramp, 0.0)


def _bandlimited(phase: np.ndarray, freq: np.ndarray, harmonics: np.ndarray, nyquist: float) -> np.ndarray:
    """Sum of ``sin(n phase) / n`` over ``harmonics`` below 0.9 Nyquist (no aliasing)."""
    out = np.zeros_like(phase)
    for n in harmonics:
        keep = n * freq < 0.9 * nyquist
        if not keep.any():
            break
        out += np.where(keep, np.sin(n * phase) / n, 0.0)
    return out


def _narrowband_noise(rng: np.random.Generator, phase: np.ndarray, width: int) -> np.ndarray:
    """Noise centred on the instantaneous pitch: moving-averaged noise shifted up by ``phase``."""
    kernel = np.ones(width) / np.sqrt(width)
    i, q = (np.convolve(rng.standard_normal(phase.size), kernel, mode="same") for _ in range(2))
    return (i * np.cos(phase) + q * np.sin(phase)) / np.sqrt(2.0)


def _synth_audio(
    p: ClipParams, timbre: str, seconds: float, sr: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The waveform, its per-sample amplitude envelope and its per-sample log2 pitch."""
    t = np.arange(int(round(seconds * sr))) / sr
    idx, age, beep_amp = _beep_state(p, t)
    beeping = idx >= 0
    pitches = np.asarray(p.beep_pitches_hz) if p.onsets_s else np.ones(1)
    freq = np.where(beeping, pitches[np.maximum(idx, 0)], p.base_pitch_hz)
    if timbre == "chirp":
        freq = freq * np.where(beeping, 2.0 ** (CHIRP_OCTAVES * age / p.beep_s), 1.0)
        # A wide vibrato keeps the chirp class's drone apart from the sine class's, so that the
        # class is audible between beeps too.
        vibrato = 2.0 ** (CHIRP_DRONE_VIBRATO_OCTAVES * np.sin(2 * np.pi * CHIRP_DRONE_VIBRATO_HZ * t))
        freq = freq * np.where(beeping, 1.0, vibrato)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    nyquist = sr / 2
    waves: dict[str, Callable[[], np.ndarray]] = {
        "sine": lambda: np.sin(phase),
        "chirp": lambda: np.sin(phase),
        "tremolo": lambda: np.sin(phase),
        "squarewave": lambda: (4 / np.pi) * _bandlimited(phase, freq, np.arange(1, 64, 2), nyquist),
        "sawtooth": lambda: (2 / np.pi) * _bandlimited(phase, freq, np.arange(1, 64), nyquist),
        "noise": lambda: 1.5 * _narrowband_noise(rng, phase, width=max(1, sr // 800)),
    }
    env = np.maximum(DRONE_LEVEL, beep_amp)
    if timbre == "tremolo":
        env = env * (0.55 + 0.45 * np.sin(2 * np.pi * TREMOLO_HZ * t))
    wave = waves[timbre]() * env
    wave *= 0.7 / max(float(np.abs(wave).max()), 1e-9)
    return wave.astype(np.float32), env, np.log2(freq)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Pixels of ``shape`` given offsets from its centre; ``r`` broadcasts per frame."""
    inside_square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # Bands of 6 pixels (at 64x64) survive chroma subsampling and downscaling to 40 pixels.
    band = 6.0
    if shape == "disk":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return inside_square
    if shape == "stripes":
        return inside_square & (np.floor(dy / band) % 2 == 0)
    if shape == "checker":
        return inside_square & ((np.floor(dx / band) + np.floor(dy / band)) % 2 == 0)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _hsv_to_rgb(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fully saturated colours of hue ``h`` in [0, 1) and value ``v``: (..., 3)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    return v[..., None] * (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _bounce(x0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at speed ``v`` reflected between ``lo`` and ``hi``."""
    span = hi - lo
    u = np.mod(x0 - lo + v * t, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def _pitch_to_hue(log2_pitch: np.ndarray) -> np.ndarray:
    lo = np.log2(MIN_PITCH_HZ) - BEEP_OCTAVES
    hi = np.log2(MAX_PITCH_HZ) + BEEP_OCTAVES
    return MAX_HUE * np.clip((log2_pitch - lo) / (hi - lo), 0.0, 1.0)


def _synth_video(
    p: ClipParams, shape: str, env: np.ndarray, log2_pitch: np.ndarray, sr: int, fps: int, size: int
) -> np.ndarray:
    """RGB frames (F, size, size, 3) uint8 whose hue and flashes follow the audio."""
    n_frames = int(round(len(env) * fps / sr))
    # Each frame shows the audio of its own display interval, so flashes are synchronous.
    frame_of_sample = np.minimum(np.arange(len(env)) * fps // sr, n_frames - 1)
    weight = np.bincount(frame_of_sample, weights=env, minlength=n_frames)
    hue = _pitch_to_hue(np.bincount(frame_of_sample, weights=env * log2_pitch, minlength=n_frames) / weight)
    count = np.bincount(frame_of_sample, minlength=n_frames)
    flash = np.clip((weight / count - DRONE_LEVEL) / (1.0 - DRONE_LEVEL), 0.0, 1.0)
    colour = (_hsv_to_rgb(hue, 0.5 + 0.5 * flash) * 255.0 + 0.5).astype(np.uint8)

    t = np.arange(n_frames) / fps
    margin = 0.3 * size
    cx = _bounce(p.start_xy[0], p.velocity_xy[0], t, margin, size - margin)
    cy = _bounce(p.start_xy[1], p.velocity_xy[1], t, margin, size - margin)
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)
    r = (p.radius * (1.0 + 0.15 * flash))[:, None, None].astype(np.float32)
    mask = _shape_mask(shape, dx, dy, r)[..., None]
    return np.where(mask, colour[:, None, None, :], np.uint8(p.background * 255.0 + 0.5))


def _write_mp4(path: Path, frames: np.ndarray, wave: np.ndarray, fps: int, sr: int) -> None:
    with av.open(str(path), "w") as container:
        # One thread: frames this small gain nothing from x264's threads. No macroblock tree:
        # with it this x264 build gave different bytes for the same frames from run to run.
        options = {"preset": "fast", "threads": "1", "x264-params": "mbtree=0"}
        video = container.add_stream("libx264", rate=fps, options=options)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # The default AAC coder takes most of the generation time; "fast" halves it. 32 kb/s
        # still keeps the full 0-8 kHz band at 16 kHz (24 kb/s cuts above ~6 kHz).
        audio = container.add_stream("aac", rate=sr, layout="mono", options={"aac_coder": "fast"})
        audio.bit_rate = 32000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        # The AAC encoder takes 1024 samples per frame; a shorter last frame is accepted.
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[None, start : start + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate = sr
            frame.pts = start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


_RULE = (
    f"class = shape x timbre. Each clip: base pitch log-uniform in [{MIN_PITCH_HZ:.0f}, "
    f"{MAX_PITCH_HZ:.0f}] Hz; rhythm = beeps on a grid of random period 0.3-0.9 s and phase, each "
    "beat kept with probability 0.75 (never two dropped in a row); each beep at base pitch x "
    f"2^U(-{BEEP_OCTAVES}, {BEEP_OCTAVES}) (chirps sweep {CHIRP_OCTAVES} octave up); drone at base "
    f"pitch in between (chirps: {CHIRP_DRONE_VIBRATO_HZ} Hz vibrato of +-{CHIRP_DRONE_VIBRATO_OCTAVES} "
    "octave). Per frame, shape hue = loudness-weighted mean log-pitch of the frame's audio, mapped "
    f"linearly to hue [0, {MAX_HUE}] over the base pitch range +- {BEEP_OCTAVES} octave (clipped); "
    "shape brightness and size follow the audio loudness (flashes = beeps). The shape drifts and "
    "bounces near the centre on a flat grey background."
)


@dataclass(frozen=True)
class _ClipJob:
    out: Path
    split: str
    split_id: int
    label: int
    spec: ClassSpec
    index: int
    seed: int
    seconds: float
    size: int
    fps: int
    sampling_rate: int


def _make_clip(job: _ClipJob) -> dict:
    # One random stream per clip: a clip does not change when the counts of other clips, or the
    # number of worker processes, change.
    rng = np.random.default_rng([job.seed, job.split_id, job.label, job.index])
    params = _draw_clip(rng, job.seconds, job.size)
    wave, env, log2_pitch = _synth_audio(params, job.spec.timbre, job.seconds, job.sampling_rate, rng)
    frames = _synth_video(params, job.spec.shape, env, log2_pitch, job.sampling_rate, job.fps, job.size)
    path = job.out / job.split / job.spec.name / f"{job.spec.name}_{job.index:03d}.mp4"
    _write_mp4(path, frames, wave, job.fps, job.sampling_rate)
    return {
        "file_name": path.relative_to(job.out).as_posix(),
        "split": job.split,
        "label": job.label,
        **asdict(params),
    }


def _run_jobs(make: Callable[[Any], dict], jobs: list, workers: int) -> list[dict]:
    """`make(job)` for every job, in order: in this process, or in `workers` forked processes."""
    if workers == 1 or len(jobs) < 2:
        return [make(job) for job in jobs]
    # Fork rather than spawn: a spawned worker would re-import the whole pemt package
    # (transformers, torch), which costs more than the clips themselves.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(make, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def make_demo_data(
    out_dir: str | Path,
    num_classes: int = 4,
    train_per_class: int = 24,
    test_per_class: int = 8,
    seconds: float = 4.0,
    size: int = 64,
    fps: int = 15,
    sampling_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write the demo data set to ``out_dir`` and return its path.

    Layout: ``out_dir/{train,test}/<class name>/<class name>_<nnn>.mp4`` (H.264 yuv420p video of
    ``size`` x ``size`` at ``fps``, mono AAC audio at ``sampling_rate``) and ``out_dir/info.json``
    (classes, the generative rule, every clip's parameters). Existing ``train``/``test`` folders
    are replaced. The output depends only on the arguments other than ``workers``: the same seed
    gives the same bytes. ``workers > 1`` encodes clips in that many forked processes (POSIX only).
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(CLASSES)}], got {num_classes}")
    if (
        train_per_class < 0
        or test_per_class < 0
        or seconds <= 0
        or size < 16
        or fps < 10
        or sampling_rate < 8000
    ):
        raise ValueError("need clip counts >= 0, seconds > 0, size >= 16, fps >= 10, sampling_rate >= 8000")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    # Labels are indices in name order, the order the ``videofolder`` builder gives its ClassLabel.
    classes = sorted(CLASSES[:num_classes], key=lambda c: c.name)
    jobs = []
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
        if (out / split).exists():
            shutil.rmtree(out / split)
        for label, spec in enumerate(classes):
            (out / split / spec.name).mkdir(parents=True)
            jobs += [
                _ClipJob(out, split, split_id, label, spec, k, seed, seconds, size, fps, sampling_rate)
                for k in range(per_class)
            ]
    clips = _run_jobs(_make_clip, jobs, workers)
    info = {
        "classes": [asdict(c) for c in classes],
        "rule": _RULE,
        "seconds": seconds,
        "size": size,
        "fps": fps,
        "sampling_rate": sampling_rate,
        "seed": seed,
        "clips": clips,
    }
    (out / _INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out


RELATIONS = ("matched", "unrelated")

_RELATION_RULE = (
    "class = relation of sound and picture. matched: the shape is the one the demo pairs with the clip's timbre, and "
    "the picture follows the clip's own sound as in the default demo rule; unrelated: the shape belongs to another "
    "of the six timbres, and the picture is the one an independent clip's sound (another base pitch and rhythm) "
    "would give. Every clip draws its timbre uniformly, so each shape and each timbre is equally likely in both "
    "classes: neither modality alone tells them apart, the pairing does."
)


@dataclass(frozen=True)
class _RelationJob:
    out: Path
    folder: str
    split_id: int
    relation: int
    index: int
    seed: int
    seconds: float
    size: int
    fps: int
    sampling_rate: int


def _make_relation_clip(job: _RelationJob) -> dict:
    # Stream ids 10+ keep these clips apart from the default task's (which use split ids 0 and 1).
    rng = np.random.default_rng([job.seed, 10 + job.split_id, job.relation, job.index])
    sound_class = int(rng.integers(len(CLASSES)))
    timbre = CLASSES[sound_class].timbre
    # A matched clip shows the shape that belongs to its timbre (the demo's class pairs); an unrelated one shows
    # the shape of another class. Each shape and each timbre is equally likely in both relations, so only the
    # pairing, which unlabelled matched clips teach, separates them.
    picture_class = sound_class
    if RELATIONS[job.relation] == "unrelated":
        picture_class = (sound_class + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)
    shape = CLASSES[picture_class].shape
    params = _draw_clip(rng, job.seconds, job.size)
    wave, env, log2_pitch = _synth_audio(params, timbre, job.seconds, job.sampling_rate, rng)
    shown = params
    if RELATIONS[job.relation] == "unrelated":
        shown = _draw_clip(rng, job.seconds, job.size)
        _, env, log2_pitch = _synth_audio(shown, timbre, job.seconds, job.sampling_rate, rng)
    frames = _synth_video(shown, shape, env, log2_pitch, job.sampling_rate, job.fps, job.size)
    name = f"{RELATIONS[job.relation]}_{job.index:03d}.mp4"
    path = job.out / job.folder / name
    _write_mp4(path, frames, wave, job.fps, job.sampling_rate)
    return {
        "file_name": path.relative_to(job.out).as_posix(),
        "relation": RELATIONS[job.relation],
        "shape": shape,
        "timbre": timbre,
        "sound": asdict(params),
        "picture": asdict(shown),
    }


def make_relation_data(
    out_dir: str | Path,
    pretrain_clips: int = 96,
    pretrain_test_clips: int = 32,
    train_per_class: int = 8,
    test_per_class: int = 60,
    seconds: float = 4.0,
    size: int = 64,
    fps: int = 15,
    sampling_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write the relation task to ``out_dir`` and return its path.

    Layout: ``out_dir/pretrain/{train,test}/unlabelled/*.mp4`` (matched clips for pretraining and its held-out
    evaluation), ``out_dir/labelled/{train,test}/{matched,unrelated}/*.mp4`` (``train_per_class`` labelled clips per
    class for fine-tuning, ``test_per_class`` held-out) and ``out_dir/info.json``. Same arguments, same bytes.
    """
    if min(pretrain_clips, pretrain_test_clips, train_per_class, test_per_class) < 1 or seconds <= 0 or size < 16:
        raise ValueError("need at least one clip of each kind, seconds > 0 and size >= 16")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    common = (seed, seconds, size, fps, sampling_rate)
    jobs = []
    # Unlabelled pretraining clips are matched (natural) videos; their stream ids (split 0, 1) differ from the
    # labelled ones' (2, 3), so no labelled clip repeats a pretraining clip.
    layout = (
        ("pretrain/train/unlabelled", 0, [(0, pretrain_clips)]),
        ("pretrain/test/unlabelled", 1, [(0, pretrain_test_clips)]),
        *((f"labelled/train/{r}", 2, [(i, train_per_class)]) for i, r in enumerate(RELATIONS)),
        *((f"labelled/test/{r}", 3, [(i, test_per_class)]) for i, r in enumerate(RELATIONS)),
    )
    for top in ("pretrain", "labelled"):
        if (out / top).exists():
            shutil.rmtree(out / top)
    for folder, split_id, groups in layout:
        (out / folder).mkdir(parents=True)
        for relation, count in groups:
            jobs += [_RelationJob(out, folder, split_id, relation, k, *common) for k in range(count)]
    clips = _run_jobs(_make_relation_clip, jobs, workers)
    info = {
        "task": "relation",
        "classes": list(RELATIONS),
        "rule": _RELATION_RULE + " Sound-picture link of a matched clip: " + _RULE,
        "seconds": seconds,
        "size": size,
        "fps": fps,
        "sampling_rate": sampling_rate,
        "seed": seed,
        "clips": clips,
    }
    (out / _INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m pemt.data.demo OUT_DIR [--seed N] [--num-classes N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pemt.data.demo", description=make_demo_data.__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--task", choices=("classes", "relation"), default="classes",
        help="classes: class = shape x timbre (either modality suffices); relation: class = whether sound and "
        "picture belong together, few labels, plus unlabelled clips for pretraining (see make_relation_data)",
    )
    parser.add_argument("--num-classes", type=int, default=4, help=f"at most {len(CLASSES)} (task classes)")
    parser.add_argument("--train-per-class", type=int, default=None, help="default: 24 (classes), 8 (relation)")
    parser.add_argument("--test-per-class", type=int, default=None, help="default: 8 (classes), 60 (relation)")
    parser.add_argument("--pretrain-clips", type=int, default=96, help="relation task: unlabelled training clips")
    parser.add_argument("--pretrain-test-clips", type=int, default=32, help="relation task: unlabelled held-out clips")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--sampling-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes (default: CPU cores, at most 4)",
    )
    args = parser.parse_args(argv)
    if args.task == "relation":
        out = make_relation_data(
            args.out_dir,
            pretrain_clips=args.pretrain_clips,
            pretrain_test_clips=args.pretrain_test_clips,
            train_per_class=8 if args.train_per_class is None else args.train_per_class,
            test_per_class=60 if args.test_per_class is None else args.test_per_class,
            seconds=args.seconds,
            size=args.size,
            fps=args.fps,
            sampling_rate=args.sampling_rate,
            seed=args.seed,
            workers=args.workers,
        )
        print(f"wrote the relation task to {out}")
        return
    out = make_demo_data(
        args.out_dir,
        num_classes=args.num_classes,
        train_per_class=24 if args.train_per_class is None else args.train_per_class,
        test_per_class=8 if args.test_per_class is None else args.test_per_class,
        seconds=args.seconds,
        size=args.size,
        fps=args.fps,
        sampling_rate=args.sampling_rate,
        seed=args.seed,
        workers=args.workers,
    )
    print(f"wrote demo data to {out}")


if __name__ == "__main__":
    main()
