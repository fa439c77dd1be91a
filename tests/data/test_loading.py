"""Labelled data sets: folder, CSV/JSONL and `datasets` sources, cached preprocessing, skip report, collate."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from pemt.model.configuration_pemt import PemtConfig
from pemt.data.loading import collate, from_hub_dataset, label_names, load_video_folder, load_video_list, preprocess_dataset
from pemt.model.processing_pemt import PemtProcessor
from tests.media_fixtures import write_media

CONFIG = PemtConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def processor() -> PemtProcessor:
    return PemtProcessor.from_model_config(CONFIG)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for split in ("train", "test"):
        for label, tone in (("bird", 880.0), ("drum", 110.0)):
            (root / split / label).mkdir(parents=True)
            write_media(root / split / label / "a.mp4", seconds=1.0, size=(24, 32), sample_rate=8000, tone_hz=tone)
    write_media(root / "train" / "drum" / "quiet.mp4", seconds=1.0, size=(24, 32), sample_rate=None)
    (root / "train" / "bird" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom broken")
    return root


def test_folder_preprocess_skips_and_reports_corrupt_files(folder, processor, tmp_path, caplog):
    splits = load_video_folder(folder)
    assert set(splits) == {"train", "test"} and label_names(splits) == {0: "bird", 1: "drum"}
    with caplog.at_level("WARNING"):
        train = preprocess_dataset(splits["train"], processor, training=True, cache_dir=tmp_path / "cache")
    assert len(train) == 3 and "broken.mp4" in caplog.text
    report = json.loads((tmp_path / "cache" / "skipped.json").read_text())
    assert len(report) == 1 and report[0]["source"].endswith("broken.mp4") and "broken.mp4" in report[0]["error"]
    side = max(CONFIG.train_short_side_range)
    assert train[0]["frames"].shape == (CONFIG.num_segments, CONFIG.frames_per_segment, side, side, 3)
    assert 0 <= int(train[0]["frames"].min()) and int(train[0]["frames"].max()) <= 255

    batch = collate([train[i] for i in range(len(train))], processor, training=True, generator=torch.Generator().manual_seed(0))
    assert batch["pixel_values"].shape == (3, 3, 3, 4, 16, 16)
    assert batch["audio_values"].shape == (3, 3, 1, 16, 16)
    assert batch["labels"].tolist() == [0, 1, 1]
    quiet = [i for i in range(len(train)) if train[i]["source"].endswith("quiet.mp4")][0]
    assert batch["audio_segment_mask"][quiet].tolist() == [0, 0, 0] and batch["visual_segment_mask"][quiet].tolist() == [1, 1, 1]

    # The second run reads the cache.
    again = preprocess_dataset(splits["train"], processor, training=True, cache_dir=tmp_path / "cache")
    assert again.cache_files and again.cache_files[0]["filename"].startswith(str(tmp_path / "cache"))


def test_eval_storage_matches_the_processor(folder, processor):
    test = preprocess_dataset(load_video_folder(folder)["test"], processor)
    batch = collate([test[0]], processor)
    direct = processor(videos=test[0]["source"])
    torch.testing.assert_close(batch["pixel_values"], direct["pixel_values"])
    torch.testing.assert_close(batch["audio_values"], direct["audio_values"])


def test_csv_and_jsonl_lists(folder, tmp_path):
    rows = [("videos/train/bird/a.mp4", "bird"), ("videos/test/drum/a.mp4", "drum")]
    (tmp_path / "videos").symlink_to(folder)
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({"path": p, "label": label}) + "\n" for p, label in rows))
    for name in ("list.csv", "list.jsonl"):
        dataset = load_video_list(tmp_path / name)
        assert dataset["video"][0] == str((tmp_path / rows[0][0]).resolve())
        assert label_names(dataset) == {0: "bird", 1: "drum"} and dataset["label"] == [0, 1]


def test_datasets_video_column(folder, processor):
    files = sorted(str(p) for p in folder.glob("test/*/a.mp4"))
    hub = datasets.Dataset.from_dict({"clip": [{"path": f, "bytes": None} for f in files], "category": ["bird", "drum"]})
    dataset = from_hub_dataset(hub, video_column="clip", label_column="category")
    processed = preprocess_dataset(dataset, processor, num_proc=2)
    assert len(processed) == 2 and label_names(processed) == {0: "bird", 1: "drum"}
    assert processed[1]["visual_segment_mask"].tolist() == [1, 1, 1]
