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

A stream opened with `load_dataset(..., streaming=True)` (a Hub data set too big to download) has no length the
processes can agree on: `datasets` deals whole shards (files) of unequal size to the processes, anew each epoch.
For it, `StreamedBatches(..., continuous=True)` reads this process's part pass after pass (each pass reshuffled by
`set_epoch(pass)`, each sample seeded by its pass), and batch `b` of the run is batch `b` of that endless sequence;
the training loop's epochs are windows of `num_batches` batches of it, so every process always fills them. Each
process records the rows of its finished passes; resuming starts reading at the pass that holds the next batch and
reads (without decoding) the rows of that pass before it: at most one pass is read again.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch

from ..model.processing_pemt import PemtProcessor
from .clips import DECODE_ERRORS, DECODER_THREADS, _describe, _report, sample_generator, stack_clips

logger = logging.getLogger(__name__)

__all__ = ["StreamedBatches", "split_stream", "rows_per_process", "shard_count", "stream_num_rows"]


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
    elif world_size > 1 and videos.num_shards % world_size:
        logger.warning(
            "The stream has %d shard(s), not a multiple of %d processes: every process reads all rows and keeps every "
            "%d-th (whole shards per process need a multiple).", videos.num_shards, world_size, world_size,
        )
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


def stream_num_rows(stream: datasets.IterableDataset, split: str | None = None) -> int | None:
    """The rows of a streamed split as its data set's info records them (a Hub data set's card usually does), or
    `None` when it does not say (local files, or a card without sizes): a stream is not counted by reading it."""
    splits = stream.info.splits
    split = split or (str(stream.split) if stream.split is not None else None)
    if not splits or split not in splits:
        return None
    return splits[split].num_examples or None


# The processor and settings of a decoding worker: set once per worker by the pool's initializer, not pickled with
# every batch.
_WORKER: dict[str, Any] = {}


def _start_worker(processor: PemtProcessor, do_normalize: bool, report_path: str | None, forked: bool = True) -> None:
    if forked:
        # A forked worker inherits the parent's OpenMP pool state, which can deadlock in libgomp; one thread each,
        # like a data-loader worker.
        torch.set_num_threads(1)
    _WORKER.update(processor=processor, do_normalize=do_normalize, report_path=report_path)


def _readable(video: Any) -> Any:
    """A `{"path", "bytes"}` value whose path is a URL (a streamed Hub data set's `Video(decode=False)` gives
    `hf://...` paths) read into bytes, here in the decoding worker; anything else as it is (PyAV opens it)."""
    if isinstance(video, dict) and video.get("bytes") is None and "://" in str(video.get("path") or ""):
        from datasets.utils.file_utils import xopen

        with xopen(video["path"], "rb") as handle:
            return {"path": video["path"], "bytes": handle.read()}
    return video


def _decode_row(seed: int, epoch: int, row: dict, label_names: list[str] | None, key: str) -> dict[str, torch.Tensor]:
    """One training sample, its randomness seeded by `(seed, epoch, key)`; raises `DECODE_ERRORS` when unreadable."""
    features = _WORKER["processor"](
        videos=_readable(row["video"]), training=True, generator=sample_generator(seed, epoch, key),
        do_normalize=_WORKER["do_normalize"], decoder_threads=DECODER_THREADS,
    )
    item = {name: value[0] for name, value in features.items()}
    label = row.get("label")
    if isinstance(label, str):
        # Names without a list (a streamed pretraining set with string labels) are not needed: -1.
        label = label_names.index(label) if label_names is not None else None
    item["labels"] = torch.tensor(-1 if label is None else int(label))
    return item


def _decode_rows(job: tuple[int, list[tuple[int, dict]], list[str] | None]) -> tuple[dict[str, torch.Tensor] | None, int]:
    """One batch: `(seed, [(epoch, row), ...], label names)` -> (stacked items, or None when no clip could be read;
    clips skipped). Each sample is seeded by `(seed, its epoch, its name)`.

    A clip that cannot be read (or fetched) is reported, and its place is taken by another view of a readable clip
    of the same batch (seeded by the clip's name and the place): the batch keeps its size (pretraining needs two
    clips or more; data-parallel processes stay in step) and stays made of its own rows, which resuming counts
    without decoding them."""
    seed, rows, label_names = job
    items: list[dict[str, torch.Tensor] | None] = []
    for epoch, row in rows:
        name = _describe(row["video"])
        try:
            items.append(_decode_row(seed, epoch, row, label_names, name))
        except DECODE_ERRORS as err:
            items.append(None)
            _report(_WORKER["report_path"], name, str(err) or type(err).__name__)
    readable = [index for index, item in enumerate(items) if item is not None]
    skipped = len(items) - len(readable)
    if not readable:
        return None, skipped
    for place, item in enumerate(items):
        if item is None:
            source = readable[place % len(readable)]
            epoch, row = rows[source]
            try:
                items[place] = _decode_row(seed, epoch, row, label_names, f"{_describe(row['video'])}#in-place-of-{place}")
            except DECODE_ERRORS:  # readable at one placement, not at another (a truncated file): the same view
                items[place] = {name: value.clone() for name, value in items[source].items()}
    return stack_clips(items), skipped


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
        continuous (`bool`, *optional*, defaults to `False`): for a stream of unknown or unequal length per process
            (`load_dataset(..., streaming=True)`): the part is read pass after pass (pass `p` after `set_epoch(p)` of
            the stream; its samples seeded by `p`), and epoch `e` is batches `e * num_batches` to
            `(e + 1) * num_batches` of that sequence, wherever the passes end. `False`: epoch `e` is the first
            `num_batches` batches of pass `e`.
        pass_record (`str`, *optional*): `continuous`: a JSON file where the rows of each finished pass are recorded,
            so that a resumed process starts reading at the pass that holds its next batch instead of at the
            stream's start. The counts depend on the data set and on how the stream is split and ordered, never on
            training: a record is used only when its `stream_key` matches.
        stream_key (`dict`, *optional*): what identifies the stream for `pass_record` (data set, split, seed,
            process, processes).
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
        continuous: bool = False,
        pass_record: str | os.PathLike | None = None,
        stream_key: dict | None = None,
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
        self.continuous = continuous
        self.pass_record = None if pass_record is None else Path(pass_record)
        self.stream_key = stream_key or {}
        self.rows_skipped = 0  # rows read without decoding to reach a resumed position
        self.epoch = 0
        self.start = 0
        self.skipped = 0  # clips skipped in this process, all workers included
        # continuous: (the run's next batch, the (pass, row) iterator positioned at it), so that the next epoch goes on
        # reading where this one stopped instead of reading the stream again from its start.
        self._cursor: tuple[int, Iterator[tuple[int, dict]]] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """The epoch's order and augmentations; iteration starts at its first batch."""
        self.epoch = epoch
        self.start = 0
        if not self.continuous:
            self.stream.set_epoch(epoch)

    def skip_batches(self, count: int) -> None:
        """The next iteration starts at batch `count` of the epoch; the rows before it are read, not decoded."""
        self.start = count

    def _pass_lengths(self) -> list[int]:
        """Rows of this process's finished passes, from `pass_record` (empty without a matching record)."""
        if self.pass_record is None or not self.pass_record.is_file():
            return []
        try:
            record = json.loads(self.pass_record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return []  # cut short by a kill: the passes are read again
        return list(record.get("rows_per_pass", [])) if record.get("stream") == self.stream_key else []

    def _record_pass(self, number: int, rows: int) -> None:
        lengths = self._pass_lengths()
        if number < len(lengths):
            if lengths[number] != rows:
                raise RuntimeError(
                    f"Pass {number} of the stream gave {rows} rows, but {lengths[number]} when it was first read "
                    f"({self.pass_record}): the data set changed since the run started."
                )
            return
        if self.pass_record is None or number != len(lengths):
            return
        partial = self.pass_record.with_name(self.pass_record.name + ".partial")
        partial.write_text(json.dumps({"stream": self.stream_key, "rows_per_pass": [*lengths, rows]}) + "\n")
        os.replace(partial, self.pass_record)  # a kill leaves the old record or the new one, never half of one

    def _passes(self, skip: int = 0) -> Iterator[tuple[int, dict]]:
        """`continuous`: this process's rows from row `skip` of the sequence of passes on, each with its pass. The
        skipped rows are read, not decoded; passes whose length is recorded are not read at all."""
        first_pass = 0
        for length in self._pass_lengths():
            if skip < length:
                break
            skip -= length
            first_pass += 1
        for number in itertools.count(first_pass):
            self.stream.set_epoch(number)
            count = 0
            for row in self.stream:
                count += 1
                if skip:
                    skip -= 1
                    self.rows_skipped += 1
                    continue
                yield number, row
            if count == 0:
                raise RuntimeError("This process's part of the stream is empty: it has fewer shards or rows than processes.")
            self._record_pass(number, count)

    def _jobs(self) -> Iterator[tuple[int, list[tuple[int, dict]], list[str] | None]]:
        if self.continuous:
            first = self.epoch * self.num_batches  # the run's batch at which this epoch starts
            if self._cursor is not None and self._cursor[0] == first + self.start:
                position, rows = self._cursor
            else:  # a fresh start or a resume: from the pass that holds the epoch's first batch to decode
                position = first + self.start
                rows = self._passes(skip=position * self.batch_size)
        else:
            first, position, rows = 0, 0, ((self.epoch, row) for row in self.stream)
        for index in range(position - first, self.num_batches):
            chunk = list(itertools.islice(rows, self.batch_size))
            if len(chunk) < self.batch_size:
                raise RuntimeError(
                    f"The stream ended after {index} full batch(es) of {self.batch_size}, but the epoch was counted as "
                    f"{self.num_batches}: the data set changed since the run started."
                )
            if self.continuous:
                self._cursor = (first + index + 1, rows)
            if index >= self.start:
                yield self.seed, chunk, self.label_names

    def _collect(self, result: tuple[dict[str, torch.Tensor] | None, int], job: tuple) -> dict[str, torch.Tensor]:
        batch, skipped = result
        self.skipped += skipped
        if batch is None:
            names = ", ".join(_describe(row["video"]) for _, row in job[1])
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
