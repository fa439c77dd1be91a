"""A data set opened with `load_dataset(..., streaming=True)` (a `datasets.IterableDataset`, as a Hub data set too big
to download is): the same samples as the same rows loaded whole, disjoint rows per process that cover every pass,
every process filling every epoch whatever its shards hold, exact resumption, and unreadable rows skipped and counted.

The data set here is a folder laid out like a Hub repository (`data/train-*.parquet`, a `Video` column and a
`ClassLabel`), loaded by path: the same `IterableDataset` code path as a Hub id, without a network.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from pemt.data.clips import read_report, sample_generator
from pemt.data.loading import from_hub_dataset, from_hub_stream, label_names
from pemt.data.streaming import StreamedBatches, split_stream
from pemt.model.configuration_pemt import PemtConfig
from pemt.model.processing_pemt import PemtProcessor
from tests.media_fixtures import write_media

CLASSES = ["low", "high"]


@pytest.fixture(autouse=True)
def no_sleep_after_a_parquet_pass(monkeypatch):
    """`datasets` waits 5 s whenever an iteration over parquet shards read by its threads ends (a guard against an
    Arrow crash at interpreter exit): a pass costs 5 s. Negligible in a run, not in tests that make many passes."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def write_hub_repo(root: Path, videos: list[dict], labels: list[int], shard_sizes: list[int]) -> Path:
    """`root/data/train-0000i-of-0000n.parquet` with columns `clip` (`Video`) and `kind` (`ClassLabel`), shard `i`
    holding `shard_sizes[i]` consecutive rows."""
    features = datasets.Features({"clip": datasets.Video(), "kind": datasets.ClassLabel(names=CLASSES)})
    table = datasets.Dataset.from_dict({"clip": videos, "kind": labels}, features=features)
    (root / "data").mkdir(parents=True)
    start = 0
    for index, size in enumerate(shard_sizes):
        table.select(range(start, start + size)).to_parquet(root / "data" / f"train-{index:05d}-of-{len(shard_sizes):05d}.parquet")
        start += size
    assert start == len(videos)
    return root


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("hub_media")
    paths = []
    for i in range(8):
        paths.append(root / f"clip{i}.mp4")
        write_media(paths[-1], seconds=2.7, fps=10, size=(48, 64), sample_rate=8000, tone_hz=200.0 + 100 * i)
    return paths


@pytest.fixture(scope="module")
def repo(media, tmp_path_factory) -> Path:
    """8 clips stored as bytes in shards of 3, 3 and 2 rows."""
    videos = [{"bytes": path.read_bytes(), "path": path.name} for path in media]
    return write_hub_repo(tmp_path_factory.mktemp("hub") / "repo", videos, [i % 2 for i in range(8)], [3, 3, 2])


@pytest.fixture(scope="module")
def processor() -> PemtProcessor:
    return PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))


def open_stream(repo: Path) -> datasets.IterableDataset:
    stream = datasets.load_dataset(str(repo), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    return from_hub_stream(stream, video_column="clip", label_column="kind")


def test_a_streamed_data_set_is_read_undecoded_with_its_columns_and_classes(repo):
    stream = open_stream(repo)
    assert stream.column_names == ["video", "label"]
    assert stream.features["video"] == datasets.Video(decode=False)  # no torchcodec: PyAV reads the bytes
    assert label_names(stream) == dict(enumerate(CLASSES))
    first = next(iter(stream))
    assert first["video"]["path"] == "clip0.mp4" and first["video"]["bytes"][4:8] == b"ftyp" and first["label"] == 0
    with pytest.raises(ValueError, match="no column 'movie'"):
        from_hub_stream(datasets.load_dataset(str(repo), split="train", streaming=True), video_column="movie")
    # String labels have no class list a stream could give without being read to its end.
    strings = open_stream(repo).cast_column("label", datasets.Value("string"))
    with pytest.raises(ValueError, match="not a ClassLabel"):
        label_names(strings)


def batches(stream, processor, num_batches, *, continuous, seed=5, report=None, epoch=0, skip=0, workers=0):
    loader = StreamedBatches(
        stream, processor, batch_size=2, num_batches=num_batches, seed=seed, num_workers=workers, report_path=report,
        continuous=continuous,
    )
    loader.set_epoch(epoch)
    loader.skip_batches(skip)
    return list(loader), loader


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_the_stream_gives_the_samples_of_the_same_rows_loaded_whole(repo, media, processor):
    streamed, _ = batches(split_stream(open_stream(repo)), processor, 4, continuous=True)
    # The existing path: the same rows loaded the ordinary way (`--dataset_name` without `--streaming`).
    whole = from_hub_dataset(datasets.load_dataset(str(repo), split="train"), "clip", "kind")
    loaded, _ = batches(split_stream(whole, num_shards=3), processor, 4, continuous=False)
    assert_same_batches(streamed, loaded)
    assert streamed[1]["labels"].tolist() == [0, 1]
    # Independently: clip 2 decoded from its file with the generator of (seed, pass 0, its name).
    alone = processor(videos=str(media[2]), training=True, generator=sample_generator(5, 0, "clip2.mp4"), do_normalize=False)
    torch.testing.assert_close(streamed[1]["pixel_values"][0], alone["pixel_values"][0], rtol=0, atol=0)
    # Negative control: another seed draws other segments and crops from the same rows.
    reseeded, _ = batches(split_stream(open_stream(repo)), processor, 4, continuous=True, seed=6)
    assert not torch.equal(reseeded[0]["pixel_values"], streamed[0]["pixel_values"])


def row_names(stream: datasets.IterableDataset, epoch: int) -> list[str]:
    stream.set_epoch(epoch)
    return [row["video"]["path"] for row in stream]


@pytest.mark.parametrize("shard_sizes", [[2, 2, 1, 3], [3, 3, 2]])
def test_two_processes_read_disjoint_rows_that_cover_every_pass(media, tmp_path, shard_sizes):
    # Paths only (no bytes), so that this test reads no video: 4 shards deal 2 whole shards to each process; 3 shards
    # do not divide, and each process keeps every second row.
    videos = [{"bytes": None, "path": str(path)} for path in media][: sum(shard_sizes)]
    root = write_hub_repo(tmp_path / "repo", videos, [0] * len(videos), shard_sizes)
    passes = []
    for epoch in (0, 1, 2):
        parts = [row_names(split_stream(open_stream(root), rank, 2, seed=1, shuffle_buffer=4), epoch) for rank in (0, 1)]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(v["path"] for v in videos)
        passes.append(parts)
    assert passes[0] != passes[1] or passes[1] != passes[2]  # the order changes between passes


def test_every_process_fills_every_epoch_and_a_resumed_process_continues_exactly(media, processor, tmp_path):
    # Shards of 3 and 1 rows over 2 processes: one process's pass is 3 rows, the other's 1 (or the reverse, as the
    # shard order changes each pass). Each must still give 2 batches of 2 in every epoch, reading into its next pass.
    videos = [{"bytes": path.read_bytes(), "path": path.name} for path in media[:4]]
    root = write_hub_repo(tmp_path / "repo", videos, [0, 1, 0, 1], [3, 1])

    def loader_of(rank: int, record: Path | None) -> StreamedBatches:
        stream = split_stream(open_stream(root), rank, 2, seed=2, shuffle_buffer=2)
        return StreamedBatches(stream, processor, batch_size=2, num_batches=2, seed=2, continuous=True,
                               pass_record=record, stream_key={"rank": rank})

    for rank in (0, 1):
        record = tmp_path / f"passes{rank}.json"
        loader = loader_of(rank, record)
        straight = []
        for epoch in (0, 1, 2):
            loader.set_epoch(epoch)
            straight.append(list(loader))
            assert [len(batch["labels"]) for batch in straight[-1]] == [2, 2]
        passes = json.loads(record.read_text())["rows_per_pass"]  # the finished ones
        assert set(passes) == {1, 3} and 9 <= sum(passes) <= 12
        before = 0  # rows of the finished passes wholly before row 10
        for length in passes:
            if before + length > 10:
                break
            before += length
        # A process restarted at epoch 2, batch 1 (a resume: run batch 5, rows 10 and 11) starts at the pass that
        # holds row 10 (the passes before it are recorded) and gives the batch the uninterrupted process gave.
        for with_record in (True, False):
            resumed = loader_of(rank, record if with_record else None)
            resumed.set_epoch(2)
            resumed.skip_batches(1)
            assert_same_batches(list(resumed), straight[2][1:])
            # Without the record, every row before row 10 is read (not decoded) again; with it, only those of
            # row 10's pass.
            assert resumed.rows_skipped == (10 - before if with_record else 10)
        # Negative control: without the skip, the restarted process would give another batch there.
        unskipped, _ = batches(split_stream(open_stream(root), rank, 2, seed=2, shuffle_buffer=2), processor, 2,
                               continuous=True, seed=2, epoch=0, skip=1)
        assert not torch.equal(unskipped[0]["pixel_values"], straight[2][1]["pixel_values"])


def test_an_unreadable_row_is_skipped_counted_and_reported_and_a_url_is_fetched(media, processor, tmp_path):
    import fsspec

    # URLs, as a streamed Hub data set's Video(decode=False) gives (hf://...); here fsspec's in-memory file system,
    # which the forked decoding worker inherits.
    memory = fsspec.filesystem("memory")
    memory.pipe("/hub_test/clip2.mp4", media[2].read_bytes())
    memory.pipe("/hub_test/gone.mp4", b"")  # the Video feature checks that a path exists when it is stored
    videos = [
        {"bytes": media[0].read_bytes(), "path": "clip0.mp4"},
        {"bytes": b"not a video at all", "path": "broken.mp4"},
        {"bytes": None, "path": "memory://hub_test/clip2.mp4"},
        {"bytes": None, "path": "memory://hub_test/gone.mp4"},
    ]
    root = write_hub_repo(tmp_path / "repo", videos, [0, 1, 0, 1], [4])
    memory.rm("/hub_test/gone.mp4")  # ... and then it is gone: fetching it fails like a lost remote file
    report = tmp_path / "skipped.jsonl"
    got, loader = batches(split_stream(open_stream(root)), processor, 3, continuous=True, report=report, workers=1)
    # Each batch of pass 0 holds an unreadable row; the third batch is pass 1's first (the same order without a
    # shuffle buffer), so it meets broken.mp4 again. Every batch keeps its size: the unreadable row's place is taken
    # by another view of the batch's readable clip, with its label.
    assert [batch["labels"].tolist() for batch in got] == [[0, 0], [0, 0], [0, 0]]
    assert loader.skipped == 3
    assert sorted(entry["source"] for entry in read_report(report)) == ["broken.mp4", "broken.mp4", "memory://hub_test/gone.mp4"]

    def view(path: Path, key: str, epoch: int = 0) -> torch.Tensor:
        return processor(videos=str(path), training=True, generator=sample_generator(5, epoch, key), do_normalize=False)["pixel_values"][0]

    # The fetched URL decodes to what the file gives; the replacement is clip0 seen at other segments and crops.
    torch.testing.assert_close(got[1]["pixel_values"][0], view(media[2], videos[2]["path"]), rtol=0, atol=0)
    torch.testing.assert_close(got[0]["pixel_values"][1], view(media[0], "clip0.mp4#in-place-of-1"), rtol=0, atol=0)
    assert not torch.equal(got[0]["pixel_values"][1], got[0]["pixel_values"][0])  # negative control: not a copy


def test_the_command_line_streams_the_training_split_and_reads_only_the_named_evaluation_split(media, tmp_path, monkeypatch):
    from pemt.errors import PemtUsageError
    from pemt.training.data_setup import DataArguments, load_streamed_splits

    videos = [{"bytes": None, "path": str(path)} for path in media[:6]]
    root = write_hub_repo(tmp_path / "repo", videos[:4], [0, 1, 0, 1], [2, 2])
    test = datasets.Dataset.from_dict(
        {"clip": videos[4:], "kind": [1, 0]},
        features=datasets.Features({"clip": datasets.Video(), "kind": datasets.ClassLabel(names=CLASSES)}),
    )
    test.to_parquet(root / "data" / "test-00000-of-00001.parquet")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    args = DataArguments(dataset_name=str(root), streaming=True, video_column="clip", label_column="kind")
    train, evaluation = load_streamed_splits(args)
    assert isinstance(train, datasets.IterableDataset) and evaluation is None  # no split is guessed
    args.eval_split = "test"
    train, evaluation = load_streamed_splits(args)
    assert isinstance(evaluation, datasets.Dataset) and list(evaluation["label"]) == [1, 0]
    assert evaluation.features["label"].names == CLASSES
    assert [v["path"] for v in evaluation["video"]] == [v["path"] for v in videos[4:]]
    # Only the evaluation split was written to the cache; the training split was never prepared.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == ["generator"]  # (and lock files)
    # `pemt evaluate --dataset_name ... --streaming --eval_split test` reads the same rows the same way.
    from pemt.training.evaluate import load_evaluation_set

    assert list(load_evaluation_set(args)["video"]) == list(evaluation["video"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == ["generator"]
    args.eval_split = "validation"
    with pytest.raises(PemtUsageError, match="--eval_split validation: Bad split"):
        load_streamed_splits(args)
    args.eval_split = None
    with pytest.raises(PemtUsageError, match="name the split with --eval_split"):
        load_evaluation_set(args)


def test_a_batch_of_which_no_clip_can_be_read_stops_with_an_error_naming_its_clips(tmp_path, processor):
    videos = [{"bytes": b"junk", "path": "bad0.mp4"}, {"bytes": b"more junk", "path": "bad1.mp4"}]
    root = write_hub_repo(tmp_path / "repo", videos, [0, 1], [2])
    with pytest.raises(RuntimeError, match=r"No clip of a batch could be read \(bad0.mp4, bad1.mp4\)"):
        batches(split_stream(open_stream(root)), processor, 1, continuous=True)


CARD = """---
dataset_info:
  features:
  - name: clip
    dtype: video
  - name: kind
    dtype:
      class_label:
        names:
          '0': low
          '1': high
  splits:
  - name: train
    num_bytes: 0
    num_examples: 8
---
"""


def test_an_epoch_is_the_row_count_the_card_records_and_without_one_max_steps_is_needed(repo, processor, tmp_path):
    from types import SimpleNamespace

    from pemt.errors import PemtUsageError
    from pemt.training.data_setup import UNCOUNTED_EPOCH_BATCHES, DataArguments, load_streamed_splits, streamed_training_batches

    def epoch_batches(root: Path, num_train_epochs: float | None, batch_size: int = 2) -> int:
        args = DataArguments(dataset_name=str(root), streaming=True, video_column="clip", label_column="kind")
        train, _ = load_streamed_splits(args)
        process = SimpleNamespace(process_index=1, num_processes=2)
        loader = streamed_training_batches(args, train, processor, process, 0, batch_size, 0, tmp_path / "skipped.jsonl",
                                           num_train_epochs)
        return len(loader)

    # Local files record no size (a folder of its own: `datasets` keeps the sizes it learnt when another test loaded
    # `repo` whole): the run is one epoch that --max_steps ends, and counting epochs is refused.
    bare, carded = tmp_path / "bare", tmp_path / "carded"
    for root in (bare, carded):
        root.mkdir()
        (root / "data").symlink_to(repo / "data")
    assert epoch_batches(bare, None) == UNCOUNTED_EPOCH_BATCHES
    with pytest.raises(PemtUsageError, match="give --max_steps instead of --num_train_epochs"):
        epoch_batches(bare, 1.0)
    # The same files with a card that records 8 rows: 8 rows / (2 processes x 2 clips) = 2 batches per epoch.
    (carded / "README.md").write_text(CARD)
    assert epoch_batches(carded, 1.0) == 2
    with pytest.raises(PemtUsageError, match="give no full batch of 5"):
        epoch_batches(carded, 1.0, batch_size=5)
