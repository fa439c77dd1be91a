"""Clips decoded on the fly in data-loader workers: from prepared shards (`pemt prepare`) or from raw files.

Every training sample draws its randomness (segment placement, crops and flips, SpecAugment) from its own
generator, seeded by `(seed, epoch, clip)`: the sample is the same whichever worker decodes it, in whatever order,
and a resumed run sees exactly the samples the killed run would have seen. Each epoch places segments anew.
Evaluation samples use fixed placement (evenly spaced views) and centre crops.

A clip that cannot be read never stops training: it is reported (log and `report_path`), counted, and the sample is
replaced by the next readable clip of the data set, so that batches keep their size and the run stays
deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import datasets
import torch

from ..model.media_pemt import MediaDecodeError
from ..model.processing_pemt import PemtProcessor

logger = logging.getLogger(__name__)

__all__ = ["sample_generator", "ClipDataset", "StreamingClips", "stack_clips", "stream_clips", "normalize_pixels"]

# Errors that mean "this file is unreadable" rather than a bug in pemt: the decoder's own, PyAV's and the OS's.
DECODE_ERRORS = (MediaDecodeError, av.error.FFmpegError, OSError, EOFError)
# Each clip is decoded on one FFmpeg thread: data-loader workers decode clips side by side, so they are the
# parallelism, and FFmpeg's frame threads would only add their overhead (15-35% more CPU per paper-size clip from
# prepared shards; benchmarks/bench_data.py).
DECODER_THREADS = 1


def sample_generator(seed: int, epoch: int, key: int | str) -> torch.Generator:
    """A generator seeded by `(seed, epoch, key)` through a hash, so that nearby triples give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _report(report_path: str | os.PathLike | None, source: str, error: str) -> None:
    logger.warning("Skipped unreadable clip %s: %s", source, error)
    if report_path is not None:
        # Workers append one short line each; O_APPEND writes of a line do not interleave.
        with open(report_path, "a") as handle:
            handle.write(json.dumps({"source": source, "error": error}) + "\n")


def _describe(video: Any) -> str:
    if isinstance(video, dict):
        return str(video.get("path") or "<bytes>")
    return str(video)


class ClipDataset(torch.utils.data.Dataset):
    r"""
    A map-style data set that decodes clip `index` when it is asked for (in a data-loader worker).

    Args:
        videos (`datasets.Dataset`): a `video` column (paths or `{"path", "bytes"}`) and, optionally, `label`.
        processor ([`PemtProcessor`]): decoding, crops and spectrograms.
        training (`bool`, *optional*, defaults to `False`): random placement and augmentation, seeded per sample.
        seed (`int`, *optional*, defaults to 0): with the epoch ([`set_epoch`]) and the index, seeds each sample.
        num_temporal_views (`int`, *optional*, defaults to 1): evaluation views per clip.
        report_path (`str`, *optional*): JSONL file each skipped clip is appended to.
        max_skips (`int`, *optional*, defaults to 16): consecutive unreadable clips tolerated before giving up
            (many in a row means the data, not a clip, is broken).
        do_normalize (`bool`, *optional*, defaults to `True`): `False` gives uint8 `pixel_values` for
            [`normalize_pixels`] to finish on the training device (what training does: a paper-size sample is then
            12 MB instead of 48 MB, and the workers skip the float work).

    Items are dicts of tensors: `pixel_values` `[k * T, 3, F, crop, crop]`, `audio_values`, `visual_segment_mask`,
    `audio_segment_mask` and `labels` (-1 for unlabelled clips); [`stack_clips`] batches them.
    """

    def __init__(
        self,
        videos: datasets.Dataset,
        processor: PemtProcessor,
        training: bool = False,
        seed: int = 0,
        num_temporal_views: int = 1,
        report_path: str | os.PathLike | None = None,
        max_skips: int = 16,
        do_normalize: bool = True,
    ):
        self.videos = videos
        self.processor = processor
        self.training = training
        self.seed = seed
        self.epoch = 0
        self.num_temporal_views = num_temporal_views
        self.report_path = report_path
        self.max_skips = max_skips
        self.do_normalize = do_normalize
        self.has_labels = "label" in videos.column_names
        self.skipped = 0  # in this process (workers keep their own counts; the report file holds them all)

    def set_epoch(self, epoch: int) -> None:
        """New segment placements and augmentations from here on (the trainer calls this at every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def decode(self, index: int) -> dict[str, torch.Tensor]:
        """Sample `index` of the current epoch; raises on an unreadable clip."""
        row = self.videos[index]
        generator = sample_generator(self.seed, self.epoch, index) if self.training else None
        features = self.processor(
            videos=row["video"], training=self.training, num_temporal_views=self.num_temporal_views, generator=generator,
            do_normalize=self.do_normalize, decoder_threads=DECODER_THREADS,
        )
        item = {key: value[0] if self.num_temporal_views == 1 else value for key, value in features.items()}
        item["labels"] = torch.tensor(int(row["label"]) if self.has_labels and row["label"] is not None else -1)
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(self.max_skips + 1):
            position = (index + attempt) % len(self)
            try:
                return self.decode(position)
            except DECODE_ERRORS as err:
                self.skipped += 1
                _report(self.report_path, _describe(self.videos[position]["video"]), str(err) or type(err).__name__)
        raise RuntimeError(f"{self.max_skips + 1} clips in a row from index {index} could not be read; see the log.")


def stack_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Data-loader collate: stacks items of [`ClipDataset`] / [`StreamingClips`] into a batch."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "source"}


def normalize_pixels(batch: dict[str, torch.Tensor], processor: PemtProcessor) -> dict[str, torch.Tensor]:
    """A batch whose uint8 `pixel_values` (`do_normalize=False`) are turned into the model's float input where the
    batch is (the training device), with masked segments zero; a batch already in float is returned as it is."""
    pixels = batch.get("pixel_values")
    if pixels is None or pixels.is_floating_point():
        return batch
    normalized = processor.video_processor.normalize(pixels, batch.get("visual_segment_mask"))
    return {**batch, "pixel_values": normalized}


class StreamingClips(torch.utils.data.IterableDataset):
    r"""
    Clips decoded on the fly from a `datasets.IterableDataset` (`streaming=True`, or `Dataset.to_iterable_dataset`).

    Use [`stream_clips`] to build one: it splits the stream between processes with `split_dataset_by_node`, and
    `datasets` splits each process's shards between its data-loader workers, so every clip is read once per epoch
    by one worker of one process. A sample's randomness is seeded by `(seed, epoch, the clip's name)`.
    Unreadable clips are skipped, counted ([`skipped`] in this process) and reported.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        processor: PemtProcessor,
        training: bool = False,
        seed: int = 0,
        report_path: str | os.PathLike | None = None,
        label_names: list[str] | None = None,
    ):
        self.stream = stream
        self.processor = processor
        self.training = training
        self.seed = seed
        self.epoch = 0
        self.report_path = report_path
        self.label_names = label_names
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for row in self.stream:
            name = _describe(row["video"])
            generator = sample_generator(self.seed, self.epoch, name) if self.training else None
            try:
                features = self.processor(
                    videos=row["video"], training=self.training, generator=generator, decoder_threads=DECODER_THREADS
                )
            except DECODE_ERRORS as err:
                self.skipped += 1
                _report(self.report_path, name, str(err) or type(err).__name__)
                continue
            item = {key: value[0] for key, value in features.items()}
            label = row.get("label")
            if isinstance(label, str) and self.label_names is not None:
                label = self.label_names.index(label)
            item["labels"] = torch.tensor(-1 if label is None else int(label))
            item["source"] = name
            yield item


def stream_clips(
    videos: datasets.Dataset | datasets.IterableDataset,
    processor: PemtProcessor,
    training: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_shards: int | None = None,
    shuffle_buffer: int = 0,
    report_path: str | os.PathLike | None = None,
) -> StreamingClips:
    """A [`StreamingClips`] over this process's part of `videos`.

    Args:
        videos: a `video` (+ optional `label`) data set; a map-style one is turned into a stream of `num_shards`
            shards (default: 8 per process) without copying.
        rank, world_size: this process and the number of processes (`accelerator.process_index`,
            `accelerator.num_processes`). With at least `world_size` shards each process reads whole shards;
            otherwise `datasets` gives each process every `world_size`-th example.
        shuffle_buffer (`int`): examples shuffled in a buffer of this size, reshuffled every epoch (0: in order).
    """
    from .streaming import split_stream  # which imports this module

    stream = split_stream(videos, rank, world_size, seed, num_shards, shuffle_buffer)
    return StreamingClips(stream, processor, training, seed, report_path)


def read_report(report_path: str | os.PathLike) -> list[dict]:
    """The clips skipped during a run (one entry per skip, from every worker and process that shares the file)."""
    path = Path(report_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
