"""Labelled video data sets, preprocessed once into tensors with `datasets.map`.

Storage choice: each clip is decoded once at evenly spaced segments; frames are kept as uint8 centre squares of
the largest side a crop can need (`PemtVideoProcessor.storage_side`), audio as log-mel spectrograms without
SpecAugment. [`collate`] then does the cheap, random part every epoch (short-side jitter, random crop,
SpecAugment) or, for evaluation, the centre crop. Segment placement is therefore fixed at preprocessing time.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher

from ..model.media_pemt import MediaDecodeError
from ..model.processing_pemt import PemtProcessor
from ..model.video_processing_pemt import zero_masked_segments

logger = logging.getLogger(__name__)

__all__ = [
    "VIDEO_EXTENSIONS",
    "load_video_folder",
    "load_prepared",
    "load_video_list",
    "from_hub_dataset",
    "from_hub_stream",
    "preprocess_dataset",
    "collate",
    "label_names",
    "align_labels",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".ts")


def _labelled(paths: list[str], labels: list[str | None], names: list[str] | None = None) -> datasets.Dataset:
    """`video` + `label` (`ClassLabel`), or only `video` when no clip has a label (unlabelled pretraining data)."""
    if all(label is None for label in labels):
        return datasets.Dataset.from_dict({"video": paths}, features=datasets.Features({"video": datasets.Value("string")}))
    missing = [path for path, label in zip(paths, labels) if label is None]
    if missing:
        raise ValueError(f"{len(missing)} clip(s) have no label while others have one, e.g. {missing[0]}.")
    names = names or sorted(set(labels))
    features = datasets.Features({"video": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"video": paths, "label": [names.index(label) for label in labels]}, features=features)


def load_video_folder(root: str | os.PathLike) -> datasets.DatasetDict | datasets.Dataset:
    """A `videofolder` layout: `root/<class>/*.mp4`, or split folders `root/<split>/<class>/*.mp4`; or a flat
    folder of unlabelled clips `root/*.mp4` (also `root/<split>/*.mp4`). A folder written by `pemt prepare` is
    read through its manifest ([`load_prepared`]).

    Returns a `Dataset` (no split folders) or a `DatasetDict` with columns `video` (path) and `label`
    (`ClassLabel`, classes sorted by name and shared by all splits; absent for unlabelled clips).
    """
    from .prepare import is_prepared

    if is_prepared(root):
        return load_prepared(root)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder.")

    def scan(folder: Path) -> tuple[list[str], list[str | None]]:
        flat = [str(f) for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS]
        paths, labels = flat, [None] * len(flat)
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in VIDEO_EXTENSIONS:
                    paths.append(str(file))
                    labels.append(class_dir.name)
        if not paths:
            loose = [p.name for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS]
            hint = f" ({len(loose)} video(s) lie directly in it: put them in one folder per class)" if loose else ""
            raise ValueError(
                f"{folder}: no video files in class folders{hint}; the layout is {folder}/<class>/*.mp4 "
                f"(extensions: {', '.join(VIDEO_EXTENSIONS)})."
            )
        return paths, labels

    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    split_names = {"train", "test", "validation", "valid", "val", "dev"}
    if subfolders and all(p.name in split_names for p in subfolders):
        scanned = {p.name: scan(p) for p in subfolders}
        names = sorted({label for _, labels in scanned.values() for label in labels} - {None})
        return datasets.DatasetDict({split: _labelled(*scanned[split], names or None) for split in scanned})
    paths, labels = scan(root)
    if not paths:
        raise ValueError(f"{root}: no video files, neither in it nor in class folders ({', '.join(VIDEO_EXTENSIONS)}).")
    return _labelled(paths, labels)


def load_prepared(root: str | os.PathLike) -> datasets.DatasetDict | datasets.Dataset:
    """A folder written by `pemt prepare`, through its manifest: `video` (absolute path of the prepared clip),
    `label` (`ClassLabel`, if the clips have labels), `duration`, `source`; a `DatasetDict` if it has splits.

    The manifest stays in Arrow buffers: a data set of a million clips costs tens of MB, shared by forked
    data-loader workers instead of copied into each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .prepare import read_manifest

    root = Path(root).resolve()
    _, table = read_manifest(root)
    if table.num_rows == 0:
        raise ValueError(f"{root}: the manifest lists no clip (see errors.json there for the files that failed).")
    columns = {"video": pc.binary_join_element_wise(str(root) + os.sep, table["path"], ""), "duration": table["duration"]}
    columns["source"] = table["source"]
    names = None
    if "label" in table.column_names:
        labels = table["label"].cast(pa.string())
        names = sorted(set(labels.to_pylist()) - {None})
        if labels.null_count:
            raise ValueError(f"{root}: {labels.null_count} clip(s) in the manifest have no label while others have one.")
        columns["label"] = pc.index_in(labels, value_set=pa.array(names))
    base = pa.table(columns)
    features = datasets.Features(
        {"video": datasets.Value("string"), "duration": datasets.Value("float64"), "source": datasets.Value("string")}
    )
    if names is not None:
        features["label"] = datasets.ClassLabel(names=names)

    def make(selected: pa.Table) -> datasets.Dataset:
        return datasets.Dataset(selected.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))

    if "split" not in table.column_names:
        return make(base)
    splits = table["split"]
    return datasets.DatasetDict(
        {split: make(base.filter(pc.equal(splits, split))) for split in sorted(set(splits.to_pylist()) - {None})}
    )


def _read_rows(file: Path) -> list[tuple[int, dict]]:
    """`(line number, row)` pairs of a CSV or JSONL list; errors name the file and the line."""
    if not file.is_file():
        raise ValueError(f"{file}: no such file.")
    if file.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}, line {number}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{file}, line {number}: expected an object with 'path' and 'label'.")
            rows.append((number, row))
        return rows
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if "path" not in header:
            raise ValueError(f"{file}: the header must name the column 'path' (and 'label' for labelled clips); it is {header}.")
        # Line 1 is the header.
        return [(number, row) for number, row in enumerate(reader, start=2)]


def load_video_list(file: str | os.PathLike) -> datasets.Dataset:
    """A CSV (`path[,label]` header) or JSONL (`{"path": ...[, "label": ...]}` per line) file; relative paths are
    read relative to the file's folder. Without labels the data set has only `video` (pretraining data).

    Raises:
        `ValueError`: no `path` column, a row without a path, a row without a label where others have one, a line
            that is not JSON, or no rows at all; the message names the file and the line.
    """
    file = Path(file)
    rows = _read_rows(file)
    paths, labels = [], []
    for number, row in rows:
        path, label = row.get("path"), row.get("label")
        if path is None or (isinstance(path, str) and not path.strip()):
            raise ValueError(f"{file}, line {number}: the row has no path.")
        paths.append(str((file.parent / path).resolve()) if not os.path.isabs(path) else path)
        labels.append(None if label is None or (isinstance(label, str) and not label.strip()) else str(label))
    if not paths:
        raise ValueError(f"{file}: no clips listed (the file is empty or holds only a header).")
    if any(label is not None for label in labels):
        for (number, _), label in zip(rows, labels):
            if label is None:
                raise ValueError(f"{file}, line {number}: the row has no label while others have one.")
    return _labelled(paths, labels)


def from_hub_dataset(dataset: datasets.Dataset, video_column: str = "video", label_column: str = "label") -> datasets.Dataset:
    """A `datasets.Dataset` with a video column (paths, `{"path", "bytes"}` or a `Video` feature) and a label
    column, renamed to `video` / `label`. Videos are read undecoded so that PyAV seeks in them."""
    if isinstance(dataset.features.get(video_column), datasets.Video):
        dataset = dataset.cast_column(video_column, datasets.Video(decode=False))
    renames = {old: new for old, new in ((video_column, "video"), (label_column, "label")) if old != new}
    dataset = dataset.rename_columns(renames) if renames else dataset
    if not isinstance(dataset.features["label"], datasets.ClassLabel):
        dataset = dataset.class_encode_column("label")
    return dataset


def from_hub_stream(
    stream: datasets.IterableDataset, video_column: str = "video", label_column: str = "label", source: str = "the stream"
) -> datasets.IterableDataset:
    """A streamed data set (`load_dataset(..., streaming=True)`) as `video` (+ `label`) rows, nothing downloaded.

    The video column may hold paths, `{"path", "bytes"}` values or a `Video` feature (read undecoded, so that PyAV
    seeks in it). A `ClassLabel` label column keeps its class names; a column of strings is kept as it is (a stream
    cannot be scanned for its classes first: fine-tuning needs a `ClassLabel`); without a label column the rows are
    pretraining data. Other columns are dropped, so that they are not carried to the decoding workers.

    Raises:
        `ValueError`: the stream has no column `video_column`; the message names `source` and its columns.
    """
    if stream.features is None:
        # Some builders (JSON, generators) learn their columns from the first row only.
        stream = stream._resolve_features()
    columns = list(stream.features)
    if video_column not in columns:
        raise ValueError(
            f"{source}: no column {video_column!r} (it has {columns}); name the videos with --video_column."
        )
    keep = [video_column] + ([label_column] if label_column in columns else [])
    stream = stream.select_columns(keep)
    if isinstance(stream.features[video_column], datasets.Video):
        stream = stream.cast_column(video_column, datasets.Video(decode=False))
    renames = {old: new for old, new in zip(keep, ("video", "label")) if old != new}
    return stream.rename_columns(renames) if renames else stream


def label_names(dataset: datasets.Dataset | datasets.DatasetDict) -> dict[int, str]:
    """`id2label` of a data set built here (or any with a `ClassLabel` `label` column)."""
    if isinstance(dataset, datasets.DatasetDict):
        dataset = next(iter(dataset.values()))
    if isinstance(dataset, datasets.IterableDataset) and "label" in dataset.column_names:
        if not isinstance(dataset.features["label"], datasets.ClassLabel):
            raise ValueError(
                "The streamed clips' labels are not a ClassLabel, so their classes are not known without reading the "
                "whole stream; give the data set a ClassLabel label column (its class names) to fine-tune on it."
            )
    if "label" not in dataset.column_names:
        raise ValueError("The clips have no labels (a flat folder, or a list without a label column); classification "
                         "needs class folders or labels.")
    return dict(enumerate(dataset.features["label"].names))


def align_labels(dataset: datasets.Dataset, id2label: dict[int, str], source: str = "the data set") -> datasets.Dataset:
    """Renumbers a data set's `label` column by name onto a model's `id2label`.

    A data set built from folders or a file numbers its classes by its own sorted names, so an evaluation folder
    holding a subset of the classes, or a file naming them in another order, would be scored against the wrong
    classes. Labels are therefore matched by name.

    Args:
        dataset (`datasets.Dataset`): with a `ClassLabel` `label` column (as the loaders here build it). A column of
            plain integers is taken as model ids and only checked against the model's range.
        id2label (`dict[int, str]`): the model's `config.id2label`.
        source (`str`, *optional*): what the data came from, for the error message.

    Raises:
        `ValueError`: a label the model does not know; the message names it and the model's labels.
    """
    id2label = {int(i): str(name) for i, name in id2label.items()}
    feature = dataset.features["label"]
    if not isinstance(feature, datasets.ClassLabel):
        unknown = sorted({int(v) for v in dataset["label"]} - set(id2label))
        if unknown:
            raise ValueError(f"{source}: label ids {unknown} are outside the model's {len(id2label)} classes.")
        return dataset
    label2id = {name: i for i, name in id2label.items()}
    present = sorted({feature.names[int(v)] for v in dataset["label"]})
    unknown = [name for name in present if name not in label2id]
    if unknown:
        raise ValueError(
            f"{source}: label(s) {', '.join(map(repr, unknown))} are not among the model's classes "
            f"({', '.join(map(repr, label2id))}); evaluate on the classes the model was trained for."
        )
    names = [id2label[i] for i in sorted(id2label)]
    if feature.names == names:
        return dataset
    mapping = {old: label2id[name] for old, name in enumerate(feature.names) if name in label2id}
    return dataset.map(
        lambda label: {"label": mapping[int(label)]},
        input_columns="label",
        features=datasets.Features({**dataset.features, "label": datasets.ClassLabel(names=names)}),
        desc="Matching labels to the model's",
    )


def _stored_features(processor: PemtProcessor, training: bool, label_feature: Any) -> datasets.Features:
    video, audio = processor.video_processor, processor.feature_extractor
    side = video.storage_side(training)
    segments = processor.num_segments
    return datasets.Features(
        {
            "frames": datasets.Array5D((segments, video.frames_per_segment, side, side, 3), "uint8"),
            "audio_values": datasets.Array4D((segments, 1, audio.num_mel_bins, audio.audio_frames), "float32"),
            "visual_segment_mask": datasets.Sequence(datasets.Value("int64"), length=segments),
            "audio_segment_mask": datasets.Sequence(datasets.Value("int64"), length=segments),
            "label": label_feature,
            "source": datasets.Value("string"),
            "error": datasets.Value("string"),
        }
    )


def _describe(video: Any) -> str:
    if isinstance(video, dict):
        return str(video.get("path") or "<bytes>")
    return str(video) if isinstance(video, (str, os.PathLike)) else type(video).__name__


def _preprocess_batch(batch: dict[str, list], rank: int | None, processor: PemtProcessor, training: bool) -> dict[str, list]:
    if rank is not None:
        # A forked worker inherits the parent's OpenMP pool state, which deadlocks in libgomp; one thread each.
        torch.set_num_threads(1)
    out: dict[str, list] = {key: [] for key in ("frames", "audio_values", "visual_segment_mask", "audio_segment_mask", "label", "source", "error")}
    video_processor = processor.video_processor
    side = video_processor.storage_side(training)
    for video, label in zip(batch["video"], batch["label"]):
        empty = {
            "frames": np.zeros((processor.num_segments, video_processor.frames_per_segment, side, side, 3), np.uint8),
            "audio_values": np.zeros((processor.num_segments, 1, processor.feature_extractor.num_mel_bins, processor.feature_extractor.audio_frames), np.float32),
        }
        try:
            segments, _, _ = processor.decode(video, short_side=side)
            no_segment = np.zeros(processor.num_segments, dtype=bool)
            video_valid = segments.video_valid if segments.frames is not None else no_segment
            audio_valid = segments.audio_valid if segments.waveform is not None else no_segment
            if segments.frames is not None:
                frames = video_processor.shrink(segments.frames, training).numpy()
                frames[~video_valid] = 0
            else:
                frames = empty["frames"]
            if segments.waveform is not None:
                audio = processor.feature_extractor(segments.waveform, return_tensors="np")["audio_values"]
                audio[~audio_valid] = 0
            else:
                audio = empty["audio_values"]
            row = {
                "frames": frames,
                "audio_values": audio,
                "visual_segment_mask": video_valid.astype(np.int64),
                "audio_segment_mask": audio_valid.astype(np.int64),
                "error": "",
            }
        except (MediaDecodeError, OSError, RuntimeError) as err:
            # One unreadable file must not stop the data set; it is dropped and reported afterwards.
            row = {**empty, "visual_segment_mask": np.zeros(processor.num_segments, np.int64), "audio_segment_mask": np.zeros(processor.num_segments, np.int64), "error": str(err) or type(err).__name__}
        row.update(label=label, source=_describe(video))
        for key, value in row.items():
            out[key].append(value)
    return out


def preprocess_dataset(
    dataset: datasets.Dataset,
    processor: PemtProcessor,
    training: bool = False,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Decodes every clip of a `video` / `label` data set once and stores tensors (see the module docstring).

    Args:
        dataset (`datasets.Dataset`): from [`load_video_folder`], [`load_video_list`] or [`from_hub_dataset`].
        processor ([`PemtProcessor`]): decides segments, sizes and spectrograms.
        training (`bool`, *optional*, defaults to `False`): store frames large enough for training crops.
        num_proc (`int`, *optional*): worker processes for `datasets.map`.
        cache_dir (`str`, *optional*): where the processed arrow files go; by default the data set's own cache
            (in-memory data sets are then not cached). A run with the same data and processor reuses the files.
        report_path (`str`, *optional*): JSON list of skipped files and reasons; defaults to
            `<cache_dir>/skipped.json` when a cache dir is given.

    Returns:
        `datasets.Dataset` in torch format with `frames`, `audio_values`, `visual_segment_mask`, `audio_segment_mask`, `label`
        (and `source`, the file each row came from). Unreadable files are left out, logged and reported.
    """
    if len(dataset) == 0:
        raise ValueError("The data set holds no clips.")
    fingerprint = Hasher.hash([dataset._fingerprint, processor.to_json_string(), training, "pemt-preprocess-v1"])
    cache_file = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cache_file = os.path.join(cache_dir, f"pemt-{fingerprint}.arrow")
    processed = dataset.map(
        _preprocess_batch,
        fn_kwargs={"processor": processor, "training": training},
        batched=True,
        with_rank=True,
        batch_size=4,
        # `datasets` starts a worker pool even for one process; in-process mapping avoids the fork.
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        remove_columns=dataset.column_names,
        features=_stored_features(processor, training, dataset.features["label"]),
        cache_file_name=cache_file,
        new_fingerprint=fingerprint,
        desc="Decoding videos",
    )
    errors = processed.filter(lambda error: error != "", input_columns="error")
    skipped = [{"source": s, "error": e} for s, e in zip(errors["source"], errors["error"])]
    if skipped:
        logger.warning("Skipped %d unreadable video(s):\n%s", len(skipped), "\n".join(f"  {s['source']}: {s['error']}" for s in skipped))
        processed = processed.filter(lambda error: error == "", input_columns="error")
    report_path = report_path or (os.path.join(cache_dir, "skipped.json") if cache_dir is not None else None)
    if report_path is not None:
        Path(report_path).write_text(json.dumps(skipped, indent=2) + "\n")
    if len(processed) == 0:
        raise ValueError(
            f"None of the {len(skipped)} video(s) could be read, e.g. {skipped[0]['error']}"
            + (f" (all reasons: {report_path})" if report_path is not None else "")
        )
    processed = processed.remove_columns("error")
    processed.set_format("torch", columns=["frames", "audio_values", "visual_segment_mask", "audio_segment_mask", "label"], output_all_columns=True)
    return processed


def collate(
    rows: list[dict[str, Any]],
    processor: PemtProcessor,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Stacks preprocessed rows into a model batch: `pixel_values` `[B, T, 3, F, crop, crop]`, `audio_values`,
    `visual_segment_mask`, `audio_segment_mask` and `labels`. Training applies the random short side, crop and SpecAugment here, so
    each epoch sees new augmentations. Use with `functools.partial(collate, processor=..., training=...)`."""
    video = processor.video_processor
    # The torch format of `datasets` widens stored uint8 frames to int64; the processor scales uint8 only.
    pixel_values = torch.stack(
        [video(torch.as_tensor(row["frames"]).to(torch.uint8), training=training, generator=generator, return_tensors="pt")["pixel_values"] for row in rows]
    )
    audio_values = torch.stack([torch.as_tensor(row["audio_values"]) for row in rows])
    visual_segment_mask = torch.stack([torch.as_tensor(row["visual_segment_mask"]) for row in rows])
    audio_segment_mask = torch.stack([torch.as_tensor(row["audio_segment_mask"]) for row in rows])
    if training:
        audio_values = processor.feature_extractor.spec_augment(audio_values, generator)
    zero_masked_segments(pixel_values, visual_segment_mask)
    zero_masked_segments(audio_values, audio_segment_mask)
    return {
        "pixel_values": pixel_values,
        "audio_values": audio_values,
        "visual_segment_mask": visual_segment_mask,
        "audio_segment_mask": audio_segment_mask,
        "labels": torch.as_tensor([int(row["label"]) for row in rows]),
    }
