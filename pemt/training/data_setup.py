"""Data options shared by pretraining and fine-tuning, and the preprocessing of the splits they name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

from ..data.loading import collate, from_hub_dataset, load_video_folder, load_video_list, preprocess_dataset
from ..errors import PemtUsageError
from ..model.processing_pemt import PemtProcessor


@dataclass
class DataArguments:
    """Where the clips come from: a videofolder, a CSV/JSONL list, or a `datasets` data set (Hub id or local
    folder/script), and where their preprocessed tensors are cached."""

    train_dir: str | None = field(
        default=None,
        metadata={"help": "A videofolder: DIR/<class>/*.mp4, or DIR/train/<class>/... with a test split beside it "
                  "(used for evaluation)."},
    )
    train_file: str | None = field(default=None, metadata={"help": "A CSV (path,label) or JSONL file of training clips."})
    eval_dir: str | None = field(
        default=None, metadata={"help": "A videofolder of evaluation clips (default: the test split of --train_dir)."}
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
    cache_dir: str | None = field(default=None, metadata={"help": "Where preprocessed tensors are cached."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})

    def __post_init__(self) -> None:
        sources = [name for name in ("train_dir", "train_file", "dataset_name") if getattr(self, name)]
        if len(sources) > 1:
            raise PemtUsageError(f"{' and '.join('--' + s for s in sources)} both name training clips; give one.")
        if self.eval_dir and self.eval_file:
            raise PemtUsageError("--eval_dir and --eval_file both name evaluation clips; give one.")


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
    if args.eval_dir:
        loaded = load_video_folder(args.eval_dir)
        evaluation = loaded["test"] if isinstance(loaded, datasets.DatasetDict) else loaded
    elif args.eval_file:
        evaluation = load_video_list(args.eval_file)
    return train, evaluation


def preprocess_splits(
    args: DataArguments, output_dir: str | Path, processor: PemtProcessor, accelerator: Accelerator
) -> tuple[datasets.Dataset, datasets.Dataset | None, datasets.Dataset, datasets.Dataset | None]:
    """Decodes each split once (main process first; the others read its cache) and returns the processed training
    and evaluation sets plus the raw ones (for label names, and for evaluations that read the files themselves)."""
    raw_train, raw_eval = load_raw_splits(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "pemt"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
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
    return train, evaluation, raw_train, raw_eval


def keep_rows(rows: list[dict]) -> list[dict]:
    """Data-loader collate that leaves batching to the training step (see `TrainingLoop.prepare_batch`)."""
    return rows


def training_batch(processor: PemtProcessor) -> functools.partial:
    """Rows -> augmented model batch, drawn from the global RNG (saved in checkpoints)."""
    return functools.partial(collate, processor=processor, training=True)


def evaluation_callback(
    evaluation: datasets.Dataset | None, processor: PemtProcessor, batch_size: int, evaluate: Callable
) -> Callable | None:
    """`evaluate(model, accelerator, loader)` bound to a loader over the preprocessed evaluation split, in the form the
    TrainingLoop calls; `None` without an evaluation split."""
    if evaluation is None:
        return None
    loader = torch.utils.data.DataLoader(
        evaluation, batch_size=batch_size, shuffle=False, collate_fn=functools.partial(collate, processor=processor, training=False)
    )
    from .loop import shard_for_evaluation  # each process evaluates its share

    return lambda model, accelerator: evaluate(model, accelerator, shard_for_evaluation(loader, accelerator))
