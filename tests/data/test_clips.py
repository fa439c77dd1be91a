"""Clips decoded on the fly: new placements and crops every epoch, samples fixed by (seed, epoch, clip) whatever
the workers, corrupt clips skipped and reported, streaming split between processes, and training from a
prepared folder of unlabelled clips with a corrupt one among them."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import datasets
import numpy as np
import pytest
import torch

from pemt.data.clips import ClipDataset, normalize_pixels, read_report, stack_clips, stream_clips
from pemt.data.loading import load_video_folder
from pemt.data.prepare import PrepareSettings, prepare
from pemt.model.configuration_pemt import PemtConfig
from pemt.model.processing_pemt import PemtProcessor
from tests.media_fixtures import frame_pattern, write_media

CONFIG = PemtConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def processor() -> PemtProcessor:
    return PemtProcessor.from_model_config(CONFIG)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six unlabelled 2.7-s clips, flat. Frame brightness encodes the frame index up to 28 frames (it wraps after)."""
    root = tmp_path_factory.mktemp("flat")
    for i in range(6):
        write_media(root / f"clip{i}.mp4", seconds=2.7, fps=10, size=(48, 64), sample_rate=8000, tone_hz=200.0 + 100 * i)
    return root


def frame_index_of_segments(pixel_values: torch.Tensor, processor: PemtProcessor) -> list[int]:
    """The source frame each segment starts at, read back from the brightness `frame_pattern` gives frame i
    (green channel: the moving bar is red only)."""
    video = processor.video_processor
    green = pixel_values[:, 1, 0].mean(dim=(-1, -2)) * video.image_std + video.image_mean  # [T] in [0, 1]
    levels = [frame_pattern(i, 4, 4)[0, 0, 1] / 255 for i in range(28)]
    return [min(range(28), key=lambda i: abs(levels[i] - float(g))) for g in green]


def test_epochs_draw_new_placements_and_crops_and_samples_are_reproducible(clips, processor):
    videos = load_video_folder(clips).select(range(6))
    dataset = ClipDataset(videos, processor, training=True, seed=7)
    first = [dataset[i] for i in range(6)]
    again = ClipDataset(videos, processor, training=True, seed=7)
    for i in range(6):  # a fresh data set (a resumed run, another worker) gives the same samples
        torch.testing.assert_close(again[i]["pixel_values"], first[i]["pixel_values"], rtol=0, atol=0)
        torch.testing.assert_close(again[i]["audio_values"], first[i]["audio_values"], rtol=0, atol=0)
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(6)]
    placements = [(frame_index_of_segments(a["pixel_values"], processor), frame_index_of_segments(b["pixel_values"], processor))
                  for a, b in zip(first, second)]
    assert sum(p != q for p, q in placements) >= 4, placements
    for p, _ in placements:  # segments stay in order within the clip
        assert p == sorted(p)
    assert all(not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, second))
    # SpecAugment and the audio window move too.
    assert all(not torch.equal(a["audio_values"], b["audio_values"]) for a, b in zip(first, second))
    # Negative control: another seed, same epoch, gives other samples.
    other = ClipDataset(videos, processor, training=True, seed=8)
    assert not torch.equal(other[0]["pixel_values"], first[0]["pixel_values"])

    # Evaluation placement is fixed: the same every epoch and equal to the processor's.
    evaluation = ClipDataset(videos, processor, training=False)
    before = evaluation[2]
    evaluation.set_epoch(5)
    torch.testing.assert_close(evaluation[2]["pixel_values"], before["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(before["pixel_values"], processor(videos=videos[2]["video"])["pixel_values"][0])
    assert before["labels"].item() == -1


def test_worker_processes_give_the_same_batches(clips, processor):
    dataset = ClipDataset(load_video_folder(clips), processor, training=True, seed=3)

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=stack_clips)
        return list(loader)

    for a, b in zip(batches(0), batches(2), strict=True):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)


def test_a_corrupt_clip_is_replaced_counted_and_reported(clips, processor, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00 ftypisom broken")
    videos = datasets.Dataset.from_dict({"video": [str(clips / "clip0.mp4"), str(tmp_path / "bad.mp4"), str(clips / "clip2.mp4")]})
    report = tmp_path / "skipped.jsonl"
    dataset = ClipDataset(videos, processor, training=False, report_path=report)
    items = [dataset[i] for i in range(3)]
    # The unreadable clip's place is taken by the next readable one; batches keep their size.
    torch.testing.assert_close(items[1]["pixel_values"], items[2]["pixel_values"])
    assert dataset.skipped == 1
    skipped = read_report(report)
    assert len(skipped) == 1 and skipped[0]["source"].endswith("bad.mp4") and "bad.mp4" in skipped[0]["error"]


def test_two_processes_stream_disjoint_clips_that_cover_the_epoch(clips, processor, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    files = [str(p) for p in sorted(clips.glob("*.mp4"))] + [str(tmp_path / "bad.mp4")]
    videos = datasets.Dataset.from_dict({"video": files})
    seen, skipped = [], 0
    for rank in (0, 1):
        stream = stream_clips(videos, processor, training=True, rank=rank, world_size=2, num_shards=4,
                              report_path=tmp_path / f"skipped{rank}.jsonl")
        stream.set_epoch(0)
        # Two data-loader workers per process: `datasets` gives each its own shards.
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        seen.append([item["source"] for item in loader])
        skipped += len(read_report(tmp_path / f"skipped{rank}.jsonl"))
    assert not set(seen[0]) & set(seen[1]) and seen[0] and seen[1]
    assert sorted(seen[0] + seen[1]) == sorted(files[:-1])
    assert skipped == 1


def test_pretraining_on_a_prepared_unlabelled_folder_skips_a_corrupt_clip(clips, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(clips, prepared, PrepareSettings.from_model_config(CONFIG))
    manifest = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    assert "label" not in manifest[0]
    damaged = prepared / manifest[3]["path"]
    damaged.write_bytes(damaged.read_bytes()[:200])  # a shard file truncated after preparation
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pemt.training.pretrain", "--output_dir", str(out), "--train_dir", str(prepared),
        "--model_config", "tiny", "--per_device_train_batch_size", "3", "--max_steps", "4", "--logging_steps", "1",
        "--checkpointing_steps", "100", "--dataloader_num_workers", "2", "--no_progress_bar",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history if "train/loss" in row] == [1, 2, 3, 4]
    skipped = read_report(out / "skipped_train.jsonl")
    # 6 clips, batches of 3, 4 steps = 2 epochs: the damaged clip is met once per epoch.
    assert len(skipped) == 2 and {s["source"] for s in skipped} == {str(damaged.resolve())}


def test_uint8_samples_normalised_on_the_device_are_the_float_samples(clips, processor):
    videos = load_video_folder(clips).select(range(4))
    as_float = ClipDataset(videos, processor, training=True, seed=5)
    as_uint8 = ClipDataset(videos, processor, training=True, seed=5, do_normalize=False)
    for dataset in (as_float, as_uint8):
        dataset.set_epoch(2)
    floats = stack_clips([as_float[i] for i in range(4)])
    raw = stack_clips([as_uint8[i] for i in range(4)])
    assert raw["pixel_values"].dtype == torch.uint8 and floats["pixel_values"].dtype == torch.float32
    # What the training loop's `prepare_batch` does with the batch on the training device.
    model_input = normalize_pixels(raw, processor)
    assert model_input.keys() == floats.keys()
    for key in floats:
        torch.testing.assert_close(model_input[key], floats[key], rtol=0, atol=1e-5)
    # A float batch passes through untouched; negative control: the same clips another epoch differ.
    assert normalize_pixels(floats, processor)["pixel_values"] is floats["pixel_values"]
    as_uint8.set_epoch(3)
    later = normalize_pixels(stack_clips([as_uint8[i] for i in range(4)]), processor)
    assert (later["pixel_values"] - floats["pixel_values"]).abs().mean() > 0.1


def test_audio_already_at_the_models_rate_skips_the_resampler_with_the_same_samples(tmp_path, monkeypatch):
    import pemt.model.media_pemt as media

    clip = write_media(tmp_path / "mono.mp4", seconds=3.0, fps=10, size=(32, 32), sample_rate=8000, tone_hz=330.0)
    timing = media.SegmentTiming(4, 2, 10.0, 8000)
    starts = [0.2, 1.1, 2.0]
    with media.open_media(clip) as opened:
        direct = opened.read_segments(starts, timing)
    with av.open(str(clip)) as container:
        assert media._already_resampled(next(container.decode(audio=0)), 8000)  # the path under test is taken
    monkeypatch.setattr(media, "_already_resampled", lambda frame, rate: False)
    with media.open_media(clip) as opened:
        resampled = opened.read_segments(starts, timing)
    np.testing.assert_array_equal(direct.waveform, resampled.waveform)
    np.testing.assert_array_equal(direct.audio_valid, resampled.audio_valid)
    assert np.abs(direct.waveform).max() > 0.05
    # Negative control: other start times give other samples.
    with media.open_media(clip) as opened:
        other = opened.read_segments([0.3, 1.2, 2.1], timing)
    assert np.abs(other.waveform - direct.waveform).max() > 0.05
