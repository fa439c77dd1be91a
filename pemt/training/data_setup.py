"""Data options shared by the training commands, and the training and evaluation data sets they name.

Two ways to feed a run (`--data_mode`):

- `on_the_fly` (default): clips are decoded in data-loader workers, from prepared folders (`pemt prepare`) or raw
  files, with new segment placement, crops and SpecAugment every epoch, each sample seeded by
  `(seed, epoch, clip)` so that a killed run resumes exactly. Memory does not grow with the data set. Workers hand
  over uint8 crops; they are normalised on the training device (`normalize_pixels` in the loop's `prepare_batch`).
  With `--streaming`, the clips are read as a `datasets` stream instead, each process its part
  (`pemt.data.streaming`); with `--dataset_name` the training split is opened with
  `load_dataset(..., streaming=True)` and never downloaded as a whole.
- `in_memory`: every clip is decoded once, at fixed segment placement, into uint8 tensors cached by `datasets`;
  only crops and SpecAugment change between epochs. It earns its place for tiny data sets only: an epoch of the
  demo data (96 clips, small preset) costs 0.19 CPU-s after a one-off 1.55 CPU-s decode, against 0.59 CPU-s from
  prepared clips and 0.89 CPU-s from the raw files (benchmarks/bench_data.py), so the CPU demo uses it. At paper
  settings it stores 24.6 MB per clip and its segments never move.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator

from ..data.clips import ClipDataset, normalize_pixels, stack_clips
from ..data.streaming import StreamedBatches, rows_per_process, split_stream, stream_num_rows
from ..data.loading import (
    align_labels, collate, from_hub_dataset, from_hub_stream, label_names, load_video_folder, load_video_list,
    preprocess_dataset,
)
from ..errors import PemtUsageError
from ..model.processing_pemt import PemtProcessor


@dataclass
class DataArguments:
    """Where the clips come from: a videofolder, a CSV/JSONL list, or a `datasets` data set (Hub id or local
    folder/script), and where their preprocessed tensors are cached."""

    train_dir: str | None = field(
        default=None,
        metadata={"help": "A folder written by `pemt prepare`, a videofolder (DIR/<class>/*.mp4, or DIR/train/<class>/... "
                  "with a test split beside it, used for evaluation), or a flat folder of unlabelled clips."},
    )
    train_file: str | None = field(default=None, metadata={"help": "A CSV (path[,label]) or JSONL file of training clips."})
    eval_dir: str | None = field(
        default=None,
        metadata={"help": "A prepared folder or videofolder of evaluation clips (default: the test split of --train_dir)."},
    )
    eval_file: str | None = field(default=None, metadata={"help": "A CSV or JSONL file of evaluation clips."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A data set for datasets.load_dataset: a Hub id, or a local data set folder or script."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The data set's configuration."})
    train_split: str = field(default="train", metadata={"help": "Training split of --dataset_name."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split of --dataset_name (default: test, validation, ... if any)."}
    )
    video_column: str = field(default="video", metadata={"help": "Column of --dataset_name holding the videos."})
    label_column: str = field(default="label", metadata={"help": "Column of --dataset_name holding the labels."})
    data_mode: str = field(
        default="on_the_fly",
        metadata={"help": "on_the_fly: decode clips in data-loader workers every epoch (new segment placement each "
                  "epoch); in_memory: decode once into cached tensors (fixed placement; tiny data sets only).",
                  "choices": ["on_the_fly", "in_memory"]},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "on_the_fly: read the training clips as a datasets stream (IterableDataset), each process its "
                  "part (split_dataset_by_node), the epoch's length from the number of clips; resuming skips the "
                  "consumed clips without decoding them. With --dataset_name, the training split is opened with "
                  "load_dataset(..., streaming=True) and never downloaded: an epoch is the rows its info records "
                  "(else give --max_steps); the evaluation split is read only when --eval_split names it."},
    )
    streaming_shuffle_buffer: int = field(
        default=1000, metadata={"help": "--streaming: clips shuffled in a buffer of this size, anew every epoch (0: in order)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "in_memory: where preprocessed tensors are cached."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "in_memory: processes for datasets.map."})

    def __post_init__(self) -> None:
        sources = [name for name in ("train_dir", "train_file", "dataset_name") if getattr(self, name)]
        if len(sources) > 1:
            raise PemtUsageError(f"{' and '.join('--' + s for s in sources)} both name training clips; give one.")
        if self.eval_dir and self.eval_file:
            raise PemtUsageError("--eval_dir and --eval_file both name evaluation clips; give one.")
        if self.streaming and self.data_mode != "on_the_fly":
            raise PemtUsageError("--streaming decodes clips on the fly; it does not combine with --data_mode in_memory.")
        if self.streaming_shuffle_buffer < 0:
            raise PemtUsageError(f"--streaming_shuffle_buffer is {self.streaming_shuffle_buffer}; it must be 0 or more.")


EVALUATION_SPLITS = ("test", "validation", "valid", "val", "dev")


def load_hub_splits(args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Training and evaluation splits of `--dataset_name` (through `datasets.load_dataset`)."""
    loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({args.train_split: loaded})
    if args.train_split not in loaded:
        raise PemtUsageError(
            f"--dataset_name {args.dataset_name} has splits {list(loaded)} but no {args.train_split!r}; "
            "name one with --train_split."
        )
    eval_split = args.eval_split or next((s for s in EVALUATION_SPLITS if s in loaded), None)
    if eval_split is not None and eval_split not in loaded:
        raise PemtUsageError(f"--eval_split {eval_split!r} is not a split of {args.dataset_name} ({list(loaded)}).")
    for split in filter(None, (args.train_split, eval_split)):
        missing = [c for c in (args.video_column, args.label_column) if c not in loaded[split].column_names]
        if missing:
            raise PemtUsageError(
                f"--dataset_name {args.dataset_name} split {split!r} has no column {', '.join(map(repr, missing))} "
                f"(it has {loaded[split].column_names}); name them with --video_column / --label_column."
            )
    train = from_hub_dataset(loaded[args.train_split], args.video_column, args.label_column)
    evaluation = None
    if eval_split is not None:
        evaluation = from_hub_dataset(loaded[eval_split], args.video_column, args.label_column)
        # Both splits number classes by the training split's names (class_encode_column sorts each split's own).
        names = train.features["label"].names
        if evaluation.features["label"].names != names:
            unknown = sorted(set(evaluation.features["label"].names) - set(names))
            if unknown:
                raise PemtUsageError(
                    f"--dataset_name {args.dataset_name} split {eval_split!r} has labels the training split lacks: "
                    f"{', '.join(unknown)}."
                )
            own = evaluation.features["label"].names
            evaluation = evaluation.map(
                lambda row: {"label": names.index(own[row["label"]])},
                features=datasets.Features({**evaluation.features, "label": datasets.ClassLabel(names=names)}),
            )
    return train, evaluation


def load_streamed_splits(args: DataArguments) -> tuple[datasets.IterableDataset, datasets.Dataset | None]:
    """`--streaming --dataset_name`: the training split opened with `load_dataset(..., streaming=True)` (read as it
    is trained on, never downloaded as a whole) and the evaluation clips of `--eval_dir` / `--eval_file`, or of the
    split `--eval_split` names (no split is guessed), read once into a local Arrow file (evaluation reads each clip
    several times, in any order); their labels are numbered by name onto the training split's classes."""
    train = open_stream(args, args.train_split, "--train_split")
    evaluation = load_eval_files(args)
    if evaluation is None and args.eval_split:
        evaluation = load_streamed_split(args, args.eval_split)
    if evaluation is not None and "label" in train.column_names and isinstance(train.features["label"], datasets.ClassLabel):
        source = args.eval_dir or args.eval_file or f"--dataset_name {args.dataset_name} --eval_split {args.eval_split}"
        evaluation = align_labels(evaluation, dict(enumerate(train.features["label"].names)), source=source)
    return train, evaluation


def open_stream(args: DataArguments, split: str, option: str) -> datasets.IterableDataset:
    """Split `split` of `--dataset_name` as `video` (+ `label`) rows of a stream; errors name the option."""
    name = args.dataset_name
    try:
        stream = datasets.load_dataset(name, args.dataset_config_name, split=split, streaming=True)
        return from_hub_stream(stream, args.video_column, args.label_column, source=f"--dataset_name {name}")
    except ValueError as err:  # an unknown split (datasets lists the splits) or a missing column
        raise PemtUsageError(f"--dataset_name {name} {option} {split}: {err}") from None


def load_streamed_split(args: DataArguments, split: str) -> datasets.Dataset:
    """Split `split` of `--dataset_name` (an evaluation split), streamed once into a local Arrow file:
    `load_dataset(name, split=...)` would download and prepare every split of the data set, the training split
    included."""
    stream = open_stream(args, split, "--eval_split")
    rows = datasets.Dataset.from_generator(_rows_of, features=stream.features, gen_kwargs={"stream": stream})
    return from_hub_dataset(rows)


def _rows_of(stream: datasets.IterableDataset):
    yield from stream


def load_eval_files(args: DataArguments) -> datasets.Dataset | None:
    """The evaluation clips `--eval_dir` or `--eval_file` name, if either does."""
    if args.eval_dir:
        loaded = load_video_folder(args.eval_dir)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[next(s for s in (*EVALUATION_SPLITS, "train") if s in loaded)]
        return loaded
    if args.eval_file:
        return load_video_list(args.eval_file)
    return None


def load_raw_splits(args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training and (optional) evaluation splits as `video`/`label` data sets."""
    evaluation = None
    if args.dataset_name:
        train, evaluation = load_hub_splits(args)
    elif args.train_dir:
        loaded = load_video_folder(args.train_dir)
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"--train_dir {args.train_dir} has split folders {list(loaded)} but no train/.")
            train = loaded["train"]
            evaluation = next((loaded[s] for s in EVALUATION_SPLITS if s in loaded), None)
        else:
            train = loaded
    elif args.train_file:
        train = load_video_list(args.train_file)
    else:
        raise PemtUsageError("Give the training clips with --train_dir, --train_file or --dataset_name.")
    evaluation = load_eval_files(args) or evaluation
    if evaluation is not None:
        # The model's classes are the training set's: the evaluation set is numbered by name onto them.
        evaluation = align_labels(evaluation, label_names(train), source=args.eval_dir or args.eval_file or args.dataset_name or args.train_dir)
    return train, evaluation


@dataclass
class TrainingData:
    r"""
    What a training command feeds its training loop with.

    Args:
        train (`torch.utils.data.Dataset`): the training items.
        collate_fn (`Callable`): items -> what the data loader yields.
        to_batch (`Callable`): what the data loader yields -> model inputs with `labels` (-1: unlabelled), run in the
            training process (the loop's `prepare_batch`).
        evaluation (`torch.utils.data.Dataset`, *optional*): evaluation items, fixed placement.
        eval_collate_fn (`Callable`): evaluation items -> model inputs with `labels`.
        raw_train, raw_eval (`datasets.Dataset`): the `video` (+ `label`) splits, for label names and evaluations
            that read the files themselves (`raw_train` is a `datasets.IterableDataset` with `--streaming
            --dataset_name`).
    """

    train: torch.utils.data.Dataset
    collate_fn: Callable
    to_batch: Callable[[Any], dict]
    evaluation: torch.utils.data.Dataset | None
    eval_collate_fn: Callable
    raw_train: datasets.Dataset | datasets.IterableDataset
    raw_eval: datasets.Dataset | None


def setup_data(
    args: DataArguments, output_dir: str | Path, processor: PemtProcessor, accelerator: Accelerator, seed: int,
    batch_size: int | None = None, num_workers: int = 0, num_train_epochs: float | None = None,
) -> TrainingData:
    """The data of a run, as `args.data_mode` asks (see the module docstring). `batch_size` (per process),
    `num_workers` and `num_train_epochs` (whether the run counts epochs) serve `--streaming`, whose data set makes
    its batches itself."""
    if args.streaming and args.dataset_name:
        with accelerator.main_process_first():  # one process writes the evaluation split's Arrow file
            raw_train, raw_eval = load_streamed_splits(args)
    else:
        raw_train, raw_eval = load_raw_splits(args)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.data_mode == "in_memory":
        train, evaluation = preprocess_splits(args, output_dir, processor, accelerator, raw_train, raw_eval)
        return TrainingData(
            train, keep_rows, training_batch(processor), evaluation,
            functools.partial(collate, processor=processor, training=False), raw_train, raw_eval,
        )
    if args.data_mode != "on_the_fly":
        raise PemtUsageError(f"--data_mode {args.data_mode!r}: choose on_the_fly or in_memory.")
    # Each process appends to its own report, so that processes never write one file at once.
    suffix = f"_process{accelerator.process_index}" if accelerator.num_processes > 1 else ""
    # Workers hand over uint8 crops; the float conversion and normalisation run on the training device, right
    # before the forward pass (a quarter of the bytes through the loader, and ~30 ms less per paper-size sample).
    if args.streaming:
        train = streamed_training_batches(args, raw_train, processor, accelerator, seed, batch_size, num_workers,
                                          output_dir / f"skipped_train{suffix}.jsonl", num_train_epochs)
    else:
        train = ClipDataset(
            raw_train, processor, training=True, seed=seed, report_path=output_dir / f"skipped_train{suffix}.jsonl",
            do_normalize=False,
        )
    evaluation = None
    if raw_eval is not None:
        evaluation = ClipDataset(raw_eval, processor, training=False, report_path=output_dir / f"skipped_eval{suffix}.jsonl")
    to_batch = functools.partial(normalize_pixels, processor=processor)
    return TrainingData(train, stack_clips, to_batch, evaluation, stack_clips, raw_train, raw_eval)


# The batches of one training-loop epoch over a stream whose length is not known: the run is one such epoch that
# `--max_steps` ends (the loop stops at its last step, not at an epoch's end).
UNCOUNTED_EPOCH_BATCHES = 2**40


def streamed_training_batches(
    args: DataArguments, raw_train: datasets.Dataset | datasets.IterableDataset, processor: PemtProcessor,
    accelerator: Accelerator, seed: int, batch_size: int | None, num_workers: int, report_path: Path,
    num_train_epochs: float | None = None,
) -> StreamedBatches:
    """`--streaming`: this process's part of the training clips as a stream, in batches of `batch_size`.

    A map-style data set (its length known): an epoch is as many batches as the smallest part fills (the same in
    every process). A `datasets.IterableDataset` (`load_dataset(..., streaming=True)`): each process reads its part
    pass after pass ([`StreamedBatches`] `continuous`), so that every process fills every step whatever its shards
    hold; an epoch is the split's rows as its info records them, divided by processes x batch size, and a run of
    unknown length is ended by `--max_steps` (`--num_train_epochs` is refused). Each process records the rows of
    its passes in the run folder (`stream_passes_process<i>.json`), so that a resumed run reads at most one pass
    again."""
    if not batch_size:
        raise ValueError("--streaming needs the per-process batch size.")
    world = accelerator.num_processes
    stream = split_stream(raw_train, accelerator.process_index, world, seed, shuffle_buffer=args.streaming_shuffle_buffer)
    continuous = isinstance(raw_train, datasets.IterableDataset)
    if continuous:
        num_rows = stream_num_rows(raw_train, args.train_split)
        if num_rows is None:
            if num_train_epochs is not None:
                raise PemtUsageError(
                    f"--streaming: the number of rows of {args.dataset_name or 'the stream'} is not recorded in its "
                    "info, so an epoch is not defined; give --max_steps instead of --num_train_epochs."
                )
            num_batches = UNCOUNTED_EPOCH_BATCHES
        else:
            num_batches = num_rows // (world * batch_size)
    else:
        num_rows = len(raw_train)
        num_batches = rows_per_process(num_rows, world) // batch_size
    if num_batches == 0:
        raise PemtUsageError(
            f"--streaming: {num_rows} training clip(s) over {world} process(es) give no full batch of {batch_size}; "
            "lower --per_device_train_batch_size."
        )
    if not continuous:
        return StreamedBatches(stream, processor, batch_size, num_batches, seed, num_workers, report_path)
    # The rows of each finished pass, per process, so that a resumed process starts at the pass holding its next
    # batch (they depend on what decides the stream's split and order, the key).
    key = {
        "dataset": args.dataset_name, "config": args.dataset_config_name, "split": args.train_split, "seed": seed,
        "shuffle_buffer": args.streaming_shuffle_buffer, "process": accelerator.process_index, "processes": world,
    }
    record = report_path.with_name(f"stream_passes_process{accelerator.process_index}.json")
    return StreamedBatches(
        stream, processor, batch_size, num_batches, seed, num_workers, report_path, continuous=True,
        pass_record=record, stream_key=key,
    )


def preprocess_splits(
    args: DataArguments, output_dir: Path, processor: PemtProcessor, accelerator: Accelerator,
    raw_train: datasets.Dataset, raw_eval: datasets.Dataset | None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """`in_memory`: decodes each split once (main process first; the others read its cache)."""
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "pemt"
    # The preprocessed format stores a label column; unlabelled clips get the placeholder -1.
    if "label" not in raw_train.column_names:
        raw_train = raw_train.add_column("label", [-1] * len(raw_train))
    if raw_eval is not None and "label" not in raw_eval.column_names:
        raw_eval = raw_eval.add_column("label", [-1] * len(raw_eval))
    with accelerator.main_process_first():
        train = preprocess_dataset(
            raw_train, processor, training=True, num_proc=args.preprocessing_num_workers, cache_dir=cache_dir,
            report_path=output_dir / "skipped_train.json",
        )
        evaluation = None
        if raw_eval is not None:
            evaluation = preprocess_dataset(
                raw_eval, processor, training=False, num_proc=args.preprocessing_num_workers, cache_dir=cache_dir,
                report_path=output_dir / "skipped_eval.json",
            )
    return train, evaluation


def keep_rows(rows: list[dict]) -> list[dict]:
    """Data-loader collate that leaves batching to the training step (see `TrainingLoop.prepare_batch`)."""
    return rows


def training_batch(processor: PemtProcessor) -> functools.partial:
    """In-memory rows -> augmented model batch, drawn from the global RNG (saved in checkpoints)."""
    return functools.partial(collate, processor=processor, training=True)


def evaluation_callback(data: TrainingData, batch_size: int, evaluate: Callable) -> Callable | None:
    """`evaluate(model, accelerator, loader)` bound to a loader over the evaluation split, in the form the
    TrainingLoop calls; `None` without an evaluation split."""
    if data.evaluation is None:
        return None
    loader = torch.utils.data.DataLoader(data.evaluation, batch_size=batch_size, shuffle=False, collate_fn=data.eval_collate_fn)
    from .loop import shard_for_evaluation  # each process evaluates its share

    return lambda model, accelerator: evaluate(model, accelerator, shard_for_evaluation(loader, accelerator))
