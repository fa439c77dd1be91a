"""Training batches from a `datasets` stream (`IterableDataset`), for the training loop (`--streaming`).

A stream has no index, so the loop's sampler, shuffling and batch skipping cannot serve it. Here each process reads
its part of the stream (`split_dataset_by_node`) itself, in the training process, in the order `datasets` gives
for the epoch (the shards' order and the shuffle buffer are reseeded by `set_epoch`): batch `b` of an epoch is rows
`b * batch_size` to `(b + 1) * batch_size` of that order. Decoding runs in forked worker processes, a few batches
ahead, and the batches come back in order, so a batch does not depend on the number of workers. Resuming skips
the rows of the batches a killed run had consumed without decoding them. The epoch has a fixed length, the same in
every process (the smallest part's rows divided by the batch size), because data-parallel processes must take the
same number of steps.

Rows are read once per process: data-loader workers of `torch` would each read the stream (or `datasets` would
split it between them by shards, which ties the batches to the number of workers).
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import datasets
import torch

from ..model.processing_pemt import PemtProcessor
from .clips import DECODE_ERRORS, DECODER_THREADS, _describe, _report, sample_generator, stack_clips

logger = logging.getLogger(__name__)

__all__ = ["StreamedBatches", "split_stream", "rows_per_process", "shard_count"]


def shard_count(num_rows: int, world_size: int) -> int:
    """Shards a map-style data set is streamed in: 8 per process (whole shards per process, and a shuffle of the
    shard order each epoch), fewer for a tiny data set."""
    return max(1, min(num_rows, 8 * world_size))


def split_stream(
    videos: datasets.Dataset | datasets.IterableDataset,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_shards: int | None = None,
    shuffle_buffer: int = 0,
) -> datasets.IterableDataset:
    """This process's part of `videos` as a stream: a map-style data set becomes `num_shards` shards (default
    [`shard_count`]) without a copy; `shuffle_buffer` rows are shuffled in a buffer reseeded every epoch; with
    several processes, `split_dataset_by_node` gives each whole shards (or every `world_size`-th row when the shards
    do not divide evenly)."""
    from datasets.distributed import split_dataset_by_node

    if isinstance(videos, datasets.Dataset):
        videos = videos.to_iterable_dataset(num_shards=num_shards or shard_count(len(videos), world_size))
    if shuffle_buffer:
        videos = videos.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if world_size > 1:
        videos = split_dataset_by_node(videos, rank=rank, world_size=world_size)
    return videos


def rows_per_process(num_rows: int, world_size: int, num_shards: int | None = None) -> int:
    """The fewest rows any process reads in any epoch from [`split_stream`] of a `num_rows` data set: the epoch
    length every process can fill. `datasets` cuts `num_shards` contiguous shards of `num_rows // num_shards` or
    one more rows, and each epoch deals the shards, in a new order, to the processes."""
    num_shards = num_shards or shard_count(num_rows, world_size)
    if num_shards % world_size == 0:
        return (num_shards // world_size) * (num_rows // num_shards)
    return num_rows // world_size  # every world_size-th row


# The processor and settings of a decoding worker: set once per worker by the pool's initializer, not pickled with
# every batch.
_WORKER: dict[str, Any] = {}


def _start_worker(processor: PemtProcessor, do_normalize: bool, report_path: str | None, forked: bool = True) -> None:
    if forked:
        # A forked worker inherits the parent's OpenMP pool state, which can deadlock in libgomp; one thread each,
        # like a data-loader worker.
        torch.set_num_threads(1)
    _WORKER.update(processor=processor, do_normalize=do_normalize, report_path=report_path)


def _decode_rows(job: tuple[int, int, list[dict], list[str] | None]) -> tuple[dict[str, torch.Tensor] | None, int]:
    """One batch: `(seed, epoch, rows, label names)` -> (stacked items, or None when no clip could be read; clips
    skipped). A clip that cannot be read is reported and left out: its batch is one clip smaller."""
    seed, epoch, rows, label_names = job
    processor: PemtProcessor = _WORKER["processor"]
    items, skipped = [], 0
    for row in rows:
        name = _describe(row["video"])
        try:
            features = processor(
                videos=row["video"], training=True, generator=sample_generator(seed, epoch, name),
                do_normalize=_WORKER["do_normalize"], decoder_threads=DECODER_THREADS,
            )
        except DECODE_ERRORS as err:
            skipped += 1
            _report(_WORKER["report_path"], name, str(err) or type(err).__name__)
            continue
        item = {key: value[0] for key, value in features.items()}
        label = row.get("label")
        if isinstance(label, str) and label_names is not None:
            label = label_names.index(label)
        item["labels"] = torch.tensor(-1 if label is None else int(label))
        items.append(item)
    return (stack_clips(items) if items else None), skipped


class StreamedBatches(torch.utils.data.IterableDataset):
    r"""
    Training batches of one process, decoded from its part of a stream (see the module docstring). Give it to a
    `DataLoader` with `batch_size=None` and no workers: it batches and runs its own workers.

    Args:
        stream (`datasets.IterableDataset`): this process's rows (`video`, optional `label`), from [`split_stream`].
        processor ([`PemtProcessor`]): decoding and augmentation; each sample is seeded by `(seed, epoch, clip name)`.
        batch_size (`int`): clips per batch.
        num_batches (`int`): batches per epoch (the same in every process); rows past them are not read.
        seed (`int`, *optional*, defaults to 0): the run's seed.
        num_workers (`int`, *optional*, defaults to 0): decoding processes (0: decode in this process).
        report_path (`str`, *optional*): JSONL file each skipped clip is appended to.
        label_names (`list[str]`, *optional*): turns string labels into ids.
        do_normalize (`bool`, *optional*, defaults to `False`): uint8 `pixel_values` for
            [`~pemt.data.clips.normalize_pixels`] on the training device, as the map-style training data gives.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        processor: PemtProcessor,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        num_workers: int = 0,
        report_path: str | os.PathLike | None = None,
        label_names: list[str] | None = None,
        do_normalize: bool = False,
    ):
        self.stream = stream
        self.processor = processor
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.num_workers = num_workers
        self.report_path = None if report_path is None else str(report_path)
        self.label_names = label_names
        self.do_normalize = do_normalize
        self.epoch = 0
        self.start = 0
        self.skipped = 0  # clips skipped in this process, all workers included

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """The epoch's order and augmentations; iteration starts at its first batch."""
        self.epoch = epoch
        self.start = 0
        self.stream.set_epoch(epoch)

    def skip_batches(self, count: int) -> None:
        """The next iteration starts at batch `count` of the epoch; the rows before it are read, not decoded."""
        self.start = count

    def _jobs(self) -> Iterator[tuple[int, int, list[dict], list[str] | None]]:
        rows = iter(self.stream)
        for index in range(self.num_batches):
            chunk = list(itertools.islice(rows, self.batch_size))
            if len(chunk) < self.batch_size:
                raise RuntimeError(
                    f"The stream ended after {index} full batch(es) of {self.batch_size}, but the epoch was counted as "
                    f"{self.num_batches}: the data set changed since the run started."
                )
            if index >= self.start:
                yield self.seed, self.epoch, chunk, self.label_names

    def _collect(self, result: tuple[dict[str, torch.Tensor] | None, int], job: tuple) -> dict[str, torch.Tensor]:
        batch, skipped = result
        self.skipped += skipped
        if batch is None:
            names = ", ".join(_describe(row["video"]) for row in job[2])
            raise RuntimeError(f"No clip of a batch could be read ({names}); see the log and the skipped-clips report.")
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.num_workers == 0:
            _start_worker(self.processor, self.do_normalize, self.report_path, forked=False)
            for job in self._jobs():
                yield self._collect(_decode_rows(job), job)
            return
        context = multiprocessing.get_context("fork")
        with context.Pool(
            self.num_workers, initializer=_start_worker, initargs=(self.processor, self.do_normalize, self.report_path)
        ) as pool:
            # Two batches per worker in flight: the workers stay busy while memory stays bounded.
            pending: collections.deque = collections.deque()
            for job in self._jobs():
                pending.append((pool.apply_async(_decode_rows, (job,)), job))
                if len(pending) >= 2 * self.num_workers:
                    result, done = pending.popleft()
                    yield self._collect(result.get(), done)
            while pending:
                result, done = pending.popleft()
                yield self._collect(result.get(), done)
