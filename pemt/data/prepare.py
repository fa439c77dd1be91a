"""`pemt prepare`: transcode a video collection once into training-ready shards.

Why: decoding a 30-s 720p source at paper settings costs seconds of a core, while a GPU consumes a clip in
milliseconds. Everything the model never looks at is removed once, here: pixels beyond the largest short side a
training crop needs, frames between the ones a segment samples, stereo and sample rates the log-mel does not use.

Layout of `OUTPUT_DIR` (all plain files, so that shards can be copied, listed and read without this library):

- `shards/NNNNN/<stem>-<id>.mp4`: h264 (yuv420p) at the short side and frame rate the model's config needs, a
  keyframe every `gop` frames so that seeking to a random segment decodes few frames it throws away; mono AAC at
  the model's sampling rate. `shard_size` clips per folder keep folders listable and give `datasets` and
  `split_dataset_by_node` whole shards to hand to processes.
- `manifest.jsonl`: one line per readable clip: `path` (relative to `OUTPUT_DIR`), `duration`, `label` (if the
  input has labels), `split` (if it has split folders or a split column), `source`.
- `errors.json`: every input that could not be read, and why.
- `prepare.json`: the settings (checked on a re-run: a folder prepared with other settings is not mixed).
- `progress.jsonl`: what is done; a killed run continues from it, and a finished run re-run does nothing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from ..errors import PemtUsageError

logger = logging.getLogger(__name__)

__all__ = ["PrepareSettings", "list_inputs", "prepare", "transcode_clip", "read_manifest", "is_prepared", "main"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".ts")
# Audio-only collections (ESC-50 is wav files) are prepared too; their clips have no video stream.
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")
SETTINGS_FILE, MANIFEST_FILE, ERRORS_FILE, PROGRESS_FILE = "prepare.json", "manifest.jsonl", "errors.json", "progress.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareSettings:
    r"""
    What a prepared clip holds.

    Args:
        short_side (`int`): frames are scaled (area filter) so that their short side is at most this.
        fps (`float`): frames per second kept (never more than the source has).
        sampling_rate (`int`): mono audio rate.
        gop (`int`, *optional*, defaults to 8): frames between keyframes. A random seek decodes on average
            `gop / 2` frames before the segment starts; 8 at 15 fps costs about 4 frames per 32-frame segment.
        crf (`int`, *optional*, defaults to 26): x264 quality (lower is better and larger).
        max_video_kbps (`int`, *optional*, defaults to 320): x264 VBV cap, so that hard content (noise, grain)
            cannot blow the storage budget up; ordinary footage stays under it at `crf`.
        audio_kbps (`int`, *optional*, defaults to 48): AAC bit rate (mono).
    """

    short_side: int
    fps: float
    sampling_rate: int
    gop: int = 8
    crf: int = 26
    max_video_kbps: int = 320
    audio_kbps: int = 48

    @classmethod
    def from_model_config(cls, config: Any, **overrides) -> PrepareSettings:
        """Settings for a `PemtConfig`: the largest short side any crop needs, and every `frame_stride`-th frame."""
        short_side = max(*config.train_short_side_range, config.eval_short_side)
        fps = float(config.video_fps) / config.frame_stride
        return cls(short_side=int(short_side), fps=fps, sampling_rate=int(config.audio_sampling_rate), **overrides)


# -- listing the inputs --------------------------------------------------------------------------------------------


def _clip_id(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def _entry(source: Any, label: Any = None, split: str | None = None, name: str | None = None) -> dict:
    described = name or (source if isinstance(source, str) else "<bytes>")
    entry = {"source": source, "name": described, "id": _clip_id(described)}
    if label is not None:
        entry["label"] = str(label)
    if split is not None:
        entry["split"] = split
    return entry


def _scan_folder(root: Path) -> list[dict]:
    """Flat folder (unlabelled), `root/<class>/*`, or `root/<split>/<class>/*` (and `root/<split>/*`)."""

    def videos(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)

    def scan(folder: Path, split: str | None) -> list[dict]:
        found = [_entry(str(p), None, split) for p in videos(folder)]
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            found += [_entry(str(p), class_dir.name, split) for p in videos(class_dir)]
        return found

    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    if subfolders and all(p.name in SPLIT_NAMES for p in subfolders):
        return [e for folder in subfolders for e in scan(folder, folder.name)]
    return scan(root, None)


def _read_list(file: Path) -> list[dict]:
    """CSV with a `path` column (optional `label`, `split`) or JSONL with those keys; relative paths are read
    relative to the list's folder."""
    if file.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{file}: line {number} is not JSON ({err.msg}).") from None
    else:
        with file.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    entries = []
    for number, row in enumerate(rows, 1):
        if not row.get("path"):
            raise ValueError(f"{file}: row {number} has no 'path'.")
        path = row["path"] if os.path.isabs(row["path"]) else str((file.parent / row["path"]).resolve())
        entries.append(_entry(path, row.get("label") or None, row.get("split") or None))
    return entries


def _read_hub(name: str, video_column: str, label_column: str) -> list[dict]:
    """Every split of a `datasets` data set (Hub name, or a `save_to_disk` folder), videos read undecoded."""
    import datasets

    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name)
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    entries = []
    for split, dataset in splits.items():
        if video_column not in dataset.column_names:
            raise ValueError(f"{name}: no column {video_column!r} (columns: {dataset.column_names}); pass --video_column.")
        if isinstance(dataset.features[video_column], datasets.Video):
            dataset = dataset.cast_column(video_column, datasets.Video(decode=False))
        label_feature = dataset.features.get(label_column)
        for index, row in enumerate(dataset):
            video = row[video_column]
            label = row.get(label_column)
            if isinstance(label_feature, datasets.ClassLabel) and label is not None:
                label = label_feature.int2str(label)
            if isinstance(video, dict):
                # Splits may reuse file names: the split is part of the name (and so of the clip's id).
                name_of = f"{split}/{video.get('path') or index}" if split else (video.get("path") or str(index))
                source = video if video.get("bytes") is not None else video.get("path")
            else:
                name_of, source = str(video), str(video)
            entries.append(_entry(source, label, split, name=name_of))
    return entries


def list_inputs(input: str | os.PathLike, video_column: str = "video", label_column: str = "label") -> list[dict]:
    """The clips `input` names: a folder (flat, class folders, or split folders), a CSV/JSONL list, or a
    `datasets` data set (a Hub name or a `save_to_disk` folder). Entries: `source`, `name`, `id`, `label`?, `split`?."""
    path = Path(input)
    if path.is_file():
        return _read_list(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _read_hub(str(path), video_column, label_column)
        return _scan_folder(path)
    text = str(input)
    # A Hub id is `name` or `owner/name`; anything else that does not exist is a mistyped path.
    if os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or path.suffix.lower() in (".csv", ".jsonl", ".json"):
        raise PemtUsageError(f"{text}: no such file or folder.")
    try:
        return _read_hub(text, video_column, label_column)
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError is one
        raise PemtUsageError(
            f"{text}: no such file or folder, and no data set of that name could be loaded ({' '.join(str(err).split())})"
        ) from err


# -- transcoding one clip ------------------------------------------------------------------------------------------


def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if min(width, height) <= short_side:
        scale = 1.0
    else:
        scale = short_side / min(width, height)
    # yuv420p needs even sides.
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def _open_source(source: Any) -> av.container.InputContainer:
    import io

    if isinstance(source, dict):
        return av.open(io.BytesIO(source["bytes"])) if source.get("bytes") is not None else av.open(source["path"])
    if isinstance(source, (bytes, bytearray)):
        return av.open(io.BytesIO(bytes(source)))
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes).")
    return av.open(path)


def transcode_clip(source: Any, target: str | os.PathLike, settings: PrepareSettings) -> float:
    """Writes `source` to `target` (mp4) as `settings` describe and returns the written clip's duration (seconds).

    Video frames are kept on a regular grid of `settings.fps` (the latest source frame at or before each tick),
    so that the prepared clip has a constant rate whatever the source's timestamps look like. Raises on an
    unreadable source; `target` is only ever complete or absent (written under a temporary name first).
    """
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    with _open_source(source) as container:
        in_video = container.streams.video[0] if container.streams.video else None
        in_audio = container.streams.audio[0] if container.streams.audio else None
        if in_video is None and in_audio is None:
            raise ValueError("no video or audio stream in the file.")
        origin = (container.start_time or 0) / av.time_base
        with av.open(str(partial), mode="w", format="mp4") as out:
            out_video = out_audio = None
            rate = None
            if in_video is not None:
                in_video.thread_type = "AUTO"
                source_rate = float(in_video.average_rate or settings.fps)
                rate = Fraction(min(settings.fps, source_rate)).limit_denominator(1001)
                width, height = _scaled_size(in_video.codec_context.width, in_video.codec_context.height, settings.short_side)
                out_video = out.add_stream("libx264", rate=rate)
                out_video.width, out_video.height, out_video.pix_fmt = width, height, "yuv420p"
                out_video.time_base = 1 / rate
                out_video.codec_context.gop_size = settings.gop
                out_video.options = {
                    "preset": "medium",
                    "crf": str(settings.crf),
                    # A fixed keyframe interval (no scene-cut keyframes, no open GOPs): every seek lands at most
                    # `gop` frames before the frame asked for.
                    "x264-params": (
                        f"keyint={settings.gop}:min-keyint={settings.gop}:scenecut=0:open-gop=0"
                        f":vbv-maxrate={settings.max_video_kbps}:vbv-bufsize={2 * settings.max_video_kbps}"
                    ),
                }
            if in_audio is not None:
                out_audio = out.add_stream("aac", rate=settings.sampling_rate, layout="mono")
                out_audio.bit_rate = settings.audio_kbps * 1000
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=settings.sampling_rate)
            tick, held, video_end = 0, None, 0.0
            audio_samples, audio_start = 0, None
            streams = [s for s in (in_video, in_audio) if s is not None]
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream is in_video:
                        time = (frame.time - origin) if frame.time is not None else tick / rate
                        # Ticks before this frame show the previous one.
                        while held is not None and tick / rate < time - 1e-6:
                            _encode_video(out, out_video, held, tick)
                            tick += 1
                        held = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                        video_end = time + 1 / source_rate
                    else:
                        if audio_start is None:
                            audio_start = max((frame.time - origin) if frame.time is not None else 0.0, 0.0)
                            audio_samples = round(audio_start * settings.sampling_rate)
                        for resampled in resampler.resample(frame):
                            audio_samples = _encode_audio(out, out_audio, resampled, audio_samples, settings.sampling_rate)
            if out_video is not None:
                if held is None:
                    raise ValueError("the video stream holds no decodable frame.")
                while tick / rate < video_end - 1e-6:
                    _encode_video(out, out_video, held, tick)
                    tick += 1
                out.mux(out_video.encode(None))
            if out_audio is not None:
                for resampled in resampler.resample(None):
                    audio_samples = _encode_audio(out, out_audio, resampled, audio_samples, settings.sampling_rate)
                out.mux(out_audio.encode(None))
    duration = max(float(tick / rate) if rate else 0.0, audio_samples / settings.sampling_rate if in_audio is not None else 0.0)
    os.replace(partial, target)
    return duration


def _encode_video(out: av.container.OutputContainer, stream: av.VideoStream, frame: av.VideoFrame, tick: int) -> None:
    rate = stream.codec_context.framerate
    frame.pts = tick
    frame.time_base = Fraction(rate.denominator, rate.numerator)
    frame.pict_type = av.video.frame.PictureType.NONE
    out.mux(stream.encode(frame))


def _encode_audio(out: av.container.OutputContainer, stream: av.AudioStream, frame: av.AudioFrame, position: int, rate: int) -> int:
    frame.pts = position
    frame.time_base = Fraction(1, rate)
    out.mux(stream.encode(frame))
    return position + frame.samples


# -- the whole collection ------------------------------------------------------------------------------------------


def _work(task: tuple[dict, str, PrepareSettings]) -> dict:
    entry, target, settings = task
    record = {"id": entry["id"], "name": entry["name"]}
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        duration = transcode_clip(entry["source"], target, settings)
        return {**record, "status": "ok", "duration": round(duration, 4)}
    except Exception as err:  # noqa: BLE001 - any failure of one file is reported, never stops the others
        Path(target + ".partial").unlink(missing_ok=True)
        return {**record, "status": "error", "error": f"{type(err).__name__}: {err}"}


def _read_progress(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut off
            done[record["id"]] = record
    return done


def prepare(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: PrepareSettings,
    num_proc: int = 1,
    shard_size: int = 1000,
    video_column: str = "video",
    label_column: str = "label",
) -> dict:
    """Transcodes every clip of `input` into `output_dir` (see the module docstring); returns a summary.

    Resumable and idempotent: clips already written (recorded in `progress.jsonl` and present on disk) are kept;
    failed ones are tried again. The manifest is rewritten at the end, in input order.
    """
    # The input is read first: a mistyped one must leave no output folder behind.
    entries = list_inputs(input, video_column, label_column)
    if not entries:
        raise ValueError(f"{input}: no media files found (extensions: {', '.join(MEDIA_EXTENSIONS)}).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings_path = output_dir / SETTINGS_FILE
    wanted = {"format_version": FORMAT_VERSION, **asdict(settings)}
    if settings_path.exists():
        existing = json.loads(settings_path.read_text())
        existing.pop("shard_size", None)
        if existing != wanted:
            raise ValueError(
                f"{output_dir} was prepared with other settings ({existing}); prepare into a new folder "
                f"instead of mixing clips of two formats."
            )
    settings_path.write_text(json.dumps({**wanted, "shard_size": shard_size}, indent=2) + "\n")
    seen: set[str] = set()
    for entry in entries:
        if entry["id"] in seen:
            raise ValueError(f"{input}: {entry['name']} is listed twice.")
        seen.add(entry["id"])

    targets = {}
    for index, entry in enumerate(entries):
        stem = Path(entry["name"]).stem[:40] or "clip"
        targets[entry["id"]] = f"shards/{index // shard_size:05d}/{stem}-{entry['id']}.mp4"
    progress_path = output_dir / PROGRESS_FILE
    progress = _read_progress(progress_path)
    todo = [
        (entry, str(output_dir / targets[entry["id"]]), settings)
        for entry in entries
        if not (progress.get(entry["id"], {}).get("status") == "ok" and (output_dir / targets[entry["id"]]).exists())
    ]
    logger.info("%d clips, %d already prepared, %d to do", len(entries), len(entries) - len(todo), len(todo))
    with progress_path.open("a") as log:
        if num_proc > 1 and len(todo) > 1:
            # Fork: the workers only run PyAV (no torch op, hence no OpenMP pool to inherit), and spawning would
            # re-import torch and transformers in each.
            with multiprocessing.get_context("fork").Pool(num_proc) as pool:
                results: Iterator[dict] = pool.imap_unordered(_work, todo)
                for record in results:
                    _log_progress(log, progress, record)
        else:
            for task in todo:
                _log_progress(log, progress, _work(task))

    manifest, errors = [], []
    for entry in entries:
        record = progress[entry["id"]]
        if record["status"] == "ok":
            row = {"path": targets[entry["id"]], "duration": record["duration"], "source": entry["name"]}
            row.update({key: entry[key] for key in ("label", "split") if key in entry})
            manifest.append(row)
        else:
            errors.append({"source": entry["name"], "error": record["error"]})
    _write_atomic(output_dir / MANIFEST_FILE, "".join(json.dumps(row) + "\n" for row in manifest))
    _write_atomic(output_dir / ERRORS_FILE, json.dumps(errors, indent=2) + "\n")
    if errors:
        logger.warning("%d file(s) could not be read (see %s):\n%s", len(errors), output_dir / ERRORS_FILE,
                       "\n".join(f"  {e['source']}: {e['error']}" for e in errors))
    size = sum((output_dir / row["path"]).stat().st_size for row in manifest)
    return {"clips": len(manifest), "errors": len(errors), "transcoded": len(todo), "bytes": size}


def _log_progress(log, progress: dict, record: dict) -> None:
    progress[record["id"]] = record
    log.write(json.dumps(record) + "\n")
    log.flush()


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# -- reading a prepared folder -------------------------------------------------------------------------------------


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by [`prepare`]."""
    return (Path(path) / SETTINGS_FILE).is_file() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(path: str | os.PathLike) -> tuple[dict, Any]:
    """The settings and the manifest (a `pyarrow.Table`: column buffers, not one Python object per clip, so that
    data-loader workers forked from the trainer share it without copying) of a prepared folder."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    path = Path(path)
    if not is_prepared(path):
        raise FileNotFoundError(f"{path}: not a prepared folder (no {SETTINGS_FILE} and {MANIFEST_FILE}); run `pemt prepare`.")
    settings = json.loads((path / SETTINGS_FILE).read_text())
    manifest_file = path / MANIFEST_FILE
    if manifest_file.stat().st_size == 0:
        return settings, pa.table({"path": pa.array([], pa.string()), "duration": pa.array([], pa.float64())})
    table = pa_json.read_json(manifest_file)
    return settings, table


# -- command line --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pemt prepare",
        description="Transcode videos once into training-ready shards (small h264 + mono AAC at the model's sizes) "
        "with a manifest and a report of unreadable files. Resumable and idempotent.",
    )
    parser.add_argument("input", help="A folder (flat, <class>/ or <split>/<class>/), a CSV/JSONL list (path[,label][,split]), "
                        "or a datasets data set (Hub name or save_to_disk folder).")
    parser.add_argument("output_dir")
    parser.add_argument("--num_proc", type=int, default=1, help="Processes transcoding in parallel.")
    parser.add_argument("--model_config", default="paper", help="A preset or config path whose input sizes the shards serve.")
    parser.add_argument("--gop", type=int, default=PrepareSettings.gop, help="Frames between keyframes.")
    parser.add_argument("--crf", type=int, default=PrepareSettings.crf, help="x264 quality (lower: better, larger).")
    parser.add_argument("--max_video_kbps", type=int, default=PrepareSettings.max_video_kbps)
    parser.add_argument("--audio_kbps", type=int, default=PrepareSettings.audio_kbps)
    parser.add_argument("--shard_size", type=int, default=1000, help="Clips per shard folder.")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--label_column", default="label")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..training.arguments import ModelArguments, load_model_config

    config = load_model_config(ModelArguments(model_config=args.model_config))
    settings = PrepareSettings.from_model_config(
        config, gop=args.gop, crf=args.crf, max_video_kbps=args.max_video_kbps, audio_kbps=args.audio_kbps
    )
    summary = prepare(args.input, args.output_dir, settings, args.num_proc, args.shard_size, args.video_column, args.label_column)
    per_clip = summary["bytes"] / max(summary["clips"], 1) / 1e6
    print(f"{summary['clips']} clips prepared ({summary['transcoded']} transcoded now), {summary['errors']} unreadable; "
          f"{per_clip:.2f} MB per clip; manifest: {Path(args.output_dir) / MANIFEST_FILE}")
    return summary


if __name__ == "__main__":
    main()
