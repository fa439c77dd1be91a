"""Training batches from a stream: processes read disjoint clips that cover the epoch, the epoch length fits every
process in every epoch, batches do not depend on the number of decoding workers, and skipping batches (resume)
gives exactly the rest of the epoch."""

from __future__ import annotations

import datasets
import pytest
import torch

from pemt.data.clips import read_report
from pemt.data.loading import load_video_folder
from pemt.data.streaming import StreamedBatches, rows_per_process, split_stream
from pemt.model.configuration_pemt import PemtConfig
from pemt.model.processing_pemt import PemtProcessor
from tests.media_fixtures import write_media


@pytest.mark.parametrize("num_rows, num_shards", [(103, None), (103, 7), (16, None), (5, None)])
def test_two_processes_read_disjoint_rows_that_cover_each_epoch(num_rows, num_shards):
    rows = datasets.Dataset.from_dict({"video": [f"clip{i:04d}.mp4" for i in range(num_rows)]})
    bound = rows_per_process(num_rows, 2, num_shards)
    orders = []
    for epoch in (0, 1, 2):
        parts = []
        for rank in (0, 1):
            stream = split_stream(rows, rank, 2, seed=0, num_shards=num_shards, shuffle_buffer=10)
            stream.set_epoch(epoch)
            parts.append([row["video"] for row in stream])
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == rows["video"]
        # The epoch length the training loop uses is filled by every process in every epoch.
        assert min(len(p) for p in parts) >= bound >= num_rows // 2 - 8
        orders.append(parts[0])
    if num_rows > 10:
        assert orders[0] != orders[1] != orders[2]  # a new order every epoch


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    for i in range(6):
        write_media(root / f"clip{i}.mp4", seconds=2.7, fps=10, size=(48, 64), sample_rate=8000, tone_hz=200.0 + 100 * i)
    (root / "clip6.mp4").write_bytes(b"not a video")
    return root


def batches_of(clips, tmp_path, workers: int, skip: int = 0, epoch: int = 1) -> tuple[list[dict], StreamedBatches]:
    processor = PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))
    stream = split_stream(load_video_folder(clips), seed=4, num_shards=3, shuffle_buffer=4)
    report = tmp_path / f"skipped_{workers}_{skip}_{epoch}.jsonl"
    batches = StreamedBatches(stream, processor, batch_size=2, num_batches=3, seed=4, num_workers=workers, report_path=report)
    batches.set_epoch(epoch)
    batches.skip_batches(skip)
    return list(batches), batches


def test_batches_do_not_depend_on_workers_and_skipping_gives_the_rest_of_the_epoch(clips, tmp_path):
    alone, dataset = batches_of(clips, tmp_path, workers=0)
    assert len(alone) == 3 and alone[0]["pixel_values"].dtype == torch.uint8
    # 7 rows, one unreadable, 3 batches of 2: this epoch meets the unreadable clip, whose place in its batch is taken
    # by another view of the batch's other clip; it is reported, and the epoch goes on.
    assert dataset.skipped == 1 and [len(b["labels"]) for b in alone] == [2, 2, 2]
    pooled, _ = batches_of(clips, tmp_path, workers=2)
    resumed, _ = batches_of(clips, tmp_path, workers=2, skip=2)
    for reference, others in ((alone, pooled), (alone[2:], resumed)):
        assert len(reference) == len(others)
        for a, b in zip(reference, others):
            torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
            torch.testing.assert_close(a["audio_values"], b["audio_values"], rtol=0, atol=0)
    # Negative control: another epoch is another order and other crops.
    other_epoch, _ = batches_of(clips, tmp_path, workers=0, epoch=2)
    assert any(not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(alone, other_epoch))
    skipped = read_report(tmp_path / "skipped_0_0_1.jsonl")
    assert len(skipped) == 1 and skipped[0]["source"].endswith("clip6.mp4")
