"""Data options shared by pretraining and fine-tuning, and the preprocessing of the splits they name."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

from ..data.loading import collate, load_video_folder, load_video_list, preprocess_dataset
from ..model.processing_pemt import PemtProcessor


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train_dir",
        help="A videofolder: DIR/<class>/*.mp4, or DIR/train/<class>/... with a test split beside it (used for evaluation).",
    )
    group.add_argument("--train_file", help="A CSV (path,label) or JSONL file of training clips.")
    group.add_argument("--eval_dir", help="A videofolder of evaluation clips (default: the test split of --train_dir).")
    group.add_argument("--eval_file", help="A CSV or JSONL file of evaluation clips.")
    group.add_argument("--cache_dir", help="Where preprocessed tensors are cached (default: datasets' cache).")
    group.add_argument("--preprocessing_num_workers", type=int, default=None, help="Processes for datasets.map.")


def load_raw_splits(args: argparse.Namespace) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training and (optional) evaluation splits as `video`/`label` data sets."""
    evaluation = None
    if args.train_dir:
        loaded = load_video_folder(args.train_dir)
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"--train_dir {args.train_dir} has split folders {list(loaded)} but no train/.")
            train = loaded["train"]
            evaluation = next((loaded[s] for s in ("test", "validation", "valid", "val", "dev") if s in loaded), None)
        else:
            train = loaded
    elif args.train_file:
        train = load_video_list(args.train_file)
    else:
        raise ValueError("Give the training clips with --train_dir or --train_file.")
    if args.eval_dir:
        loaded = load_video_folder(args.eval_dir)
        evaluation = loaded["test"] if isinstance(loaded, datasets.DatasetDict) else loaded
    elif args.eval_file:
        evaluation = load_video_list(args.eval_file)
    return train, evaluation


def preprocess_splits(
    args: argparse.Namespace, processor: PemtProcessor, accelerator: Accelerator
) -> tuple[datasets.Dataset, datasets.Dataset | None, datasets.Dataset, datasets.Dataset | None]:
    """Decodes each split once (main process first; the others read its cache) and returns the processed training
    and evaluation sets plus the raw ones (for label names, and for evaluations that read the files themselves)."""
    raw_train, raw_eval = load_raw_splits(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "pemt"
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with accelerator.main_process_first():
        train = preprocess_dataset(
            raw_train, processor, training=True, num_proc=args.preprocessing_num_workers, cache_dir=cache_dir,
            report_path=Path(args.output_dir) / "skipped_train.json",
        )
        evaluation = None
        if raw_eval is not None:
            evaluation = preprocess_dataset(
                raw_eval, processor, training=False, num_proc=args.preprocessing_num_workers, cache_dir=cache_dir,
                report_path=Path(args.output_dir) / "skipped_eval.json",
            )
    return train, evaluation, raw_train, raw_eval


def keep_rows(rows: list[dict]) -> list[dict]:
    """Data-loader collate that leaves batching to the training step (see `Trainer.prepare_batch`)."""
    return rows


def training_batch(processor: PemtProcessor) -> functools.partial:
    """Rows -> augmented model batch, drawn from the global RNG (saved in checkpoints)."""
    return functools.partial(collate, processor=processor, training=True)


def evaluation_callback(
    evaluation: datasets.Dataset | None, processor: PemtProcessor, batch_size: int, evaluate: Callable
) -> Callable | None:
    """`evaluate(model, accelerator, loader)` bound to a loader over the preprocessed evaluation split, in the form the
    Trainer calls; `None` without an evaluation split."""
    if evaluation is None:
        return None
    loader = torch.utils.data.DataLoader(
        evaluation, batch_size=batch_size, shuffle=False, collate_fn=functools.partial(collate, processor=processor, training=False)
    )
    return lambda model, accelerator: evaluate(model, accelerator, loader)
