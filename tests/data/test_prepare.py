"""`pemt prepare`: what a prepared clip holds, the manifest and error report, resuming and idempotence, inputs."""

from __future__ import annotations

import json
import os

import av
import datasets
import numpy as np
import pytest
import torch

from pemt.data.loading import load_video_folder
from pemt.data.prepare import PrepareSettings, list_inputs, main as prepare_main, prepare
from pemt.model.configuration_pemt import PemtConfig
from pemt.model.processing_pemt import PemtProcessor
from pemt.training.data_setup import DataArguments, load_raw_splits
from pemt.training.evaluate import load_evaluation_set
from tests.media_fixtures import write_media

CONFIG = PemtConfig.from_preset("tiny")
SETTINGS = PrepareSettings.from_model_config(CONFIG)  # short side 24, 5 fps, 8 kHz


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two classes of 2-s clips at 25 fps, 48x64, 16 kHz stereo (birds: a moving bar and a high tone; drums:
    scrolling noise and a low tone), plus a file that is not a video."""
    root = tmp_path_factory.mktemp("sources")
    for label, tone in (("bird", 880.0), ("drum", 110.0)):
        (root / label).mkdir()
        for name in ("a", "b"):
            write_media(root / label / f"{name}.mp4", seconds=2.0, size=(48, 64), sample_rate=16000, channels=2,
                        tone_hz=tone, textured=label == "drum")
    (root / "drum" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom broken")
    return root


def test_clips_with_one_stream_keep_it(tmp_path):
    write_media(tmp_path / "silent.mp4", seconds=1.6, sample_rate=None)
    write_media(tmp_path / "sound.wav", seconds=1.2, video=False)
    summary = prepare(tmp_path, tmp_path / "out", SETTINGS)
    assert summary["clips"] == 2 and summary["errors"] == 0
    manifest = {os.path.basename(r["source"]): r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert manifest["silent.mp4"]["duration"] == pytest.approx(1.6, abs=0.25)
    assert manifest["sound.wav"]["duration"] == pytest.approx(1.2, abs=0.05)
    with av.open(str(tmp_path / "out" / manifest["silent.mp4"]["path"])) as container:
        assert [s.type for s in container.streams] == ["video"]
    with av.open(str(tmp_path / "out" / manifest["sound.wav"]["path"])) as container:
        assert [s.type for s in container.streams] == ["audio"]


def test_settings_follow_the_model_config():
    assert (SETTINGS.short_side, SETTINGS.fps, SETTINGS.sampling_rate) == (24, 5.0, 8000)
    paper = PrepareSettings.from_model_config(PemtConfig.from_preset("paper"))
    assert (paper.short_side, paper.fps, paper.sampling_rate) == (160, 15.0, 44100)


def test_prepare_writes_small_clips_a_manifest_and_an_error_report(sources, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare(sources, out, SETTINGS, num_proc=2)
    assert summary == {**summary, "clips": 4, "errors": 1, "transcoded": 5}

    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(row["label"], os.path.basename(row["source"])) for row in manifest] == [
        ("bird", "a.mp4"), ("bird", "b.mp4"), ("drum", "a.mp4"), ("drum", "b.mp4")
    ]
    assert all(abs(row["duration"] - 2.0) < 0.15 for row in manifest), manifest
    errors = json.loads((out / "errors.json").read_text())
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.mp4") and "broken.mp4" in errors[0]["error"]

    with av.open(str(out / manifest[0]["path"])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height) == (32, 24)  # 48x64 scaled to a short side of 24
        assert float(video.average_rate) == 5.0 and video.frames == 10
        assert (audio.rate, audio.channels) == (8000, 1)
        keyframes = [i for i, packet in enumerate(container.demux(video)) if packet.is_keyframe]
        assert keyframes and np.diff(keyframes).max(initial=0) <= SETTINGS.gop

    # The content survives: evaluation inputs from the prepared clip are close to those from the source, and
    # far from those of the other class (negative control).
    processor = PemtProcessor.from_model_config(CONFIG)
    original = processor(videos=str(sources / "bird" / "a.mp4"))
    prepared = processor(videos=str(out / manifest[0]["path"]))
    other = processor(videos=str(out / manifest[2]["path"]))
    near = (prepared["pixel_values"] - original["pixel_values"]).abs().mean()
    far = (other["pixel_values"] - original["pixel_values"]).abs().mean()
    assert near < 0.15 and far > 4 * near, (near, far)
    audio_near = (prepared["audio_values"] - original["audio_values"]).abs().mean()
    audio_far = (other["audio_values"] - original["audio_values"]).abs().mean()
    assert audio_far > 4 * audio_near, (audio_near, audio_far)


def test_prepare_resumes_and_is_idempotent(sources, tmp_path):
    out = tmp_path / "prepared"
    prepare(sources, out, SETTINGS)
    clips = sorted((out / "shards").rglob("*.mp4"))
    stamps = {p: p.stat().st_mtime_ns for p in clips}
    manifest = (out / "manifest.jsonl").read_text()

    # A finished run re-run writes nothing new (only the unreadable file is tried again).
    assert prepare(sources, out, SETTINGS)["transcoded"] == 1
    assert {p: p.stat().st_mtime_ns for p in clips} == stamps
    assert (out / "manifest.jsonl").read_text() == manifest

    # A run killed after two clips: their progress lines survive, a half-written last line and a partial file do not count.
    progress = (out / "progress.jsonl").read_text().splitlines()
    done = [json.loads(line) for line in progress if '"ok"' in line][:2]
    (out / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": "cut off')
    kept = [p for p in clips if any(p.stem.endswith(r["id"]) for r in done)]
    for path in set(clips) - set(kept):
        path.unlink()
    assert len(kept) == 2
    summary = prepare(sources, out, SETTINGS)
    assert summary["transcoded"] == 3 and summary["clips"] == 4
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)
    assert (out / "manifest.jsonl").read_text() == manifest

    with pytest.raises(ValueError, match="other settings"):
        prepare(sources, out, PrepareSettings(short_side=32, fps=5.0, sampling_rate=8000))


def test_flat_folder_list_and_datasets_inputs(sources, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("one", "two"):
        (flat / f"{name}.mp4").symlink_to(sources / "bird" / "a.mp4")
    entries = list_inputs(flat)
    assert [os.path.basename(e["source"]) for e in entries] == ["one.mp4", "two.mp4"] and "label" not in entries[0]

    listing = tmp_path / "clips.jsonl"
    listing.write_text(json.dumps({"path": "flat/one.mp4"}) + "\n" + json.dumps({"path": str(flat / "two.mp4"), "label": "x"}) + "\n")
    entries = list_inputs(listing)
    assert entries[0]["source"] == str((flat / "one.mp4").resolve()) and entries[1]["label"] == "x"

    # A `datasets` data set with the clip's bytes (as the Hub stores them), saved to disk.
    data = (sources / "drum" / "a.mp4").read_bytes()
    hub = datasets.Dataset.from_dict(
        {"video": [{"path": "drum_a.mp4", "bytes": data}], "label": ["drum"]},
    )
    hub.save_to_disk(str(tmp_path / "hub"))
    out = tmp_path / "from_hub"
    assert prepare(tmp_path / "hub", out, SETTINGS)["clips"] == 1
    row = json.loads((out / "manifest.jsonl").read_text())
    assert row["label"] == "drum" and row["source"].endswith("drum_a.mp4")

    # Unlabelled flat folder -> a prepared folder whose data set has no label column.
    prepare_main([str(flat), str(tmp_path / "flat_prepared"), "--model_config", "tiny", "--num_proc", "1"])
    loaded = load_video_folder(tmp_path / "flat_prepared")
    assert loaded.column_names == ["video", "duration", "source"] and len(loaded) == 2


def test_prepared_folder_with_splits_loads_as_splits(sources, tmp_path):
    split_root = tmp_path / "splits"
    for split in ("train", "test"):
        (split_root / split / "bird").mkdir(parents=True)
        (split_root / split / "bird" / "a.mp4").symlink_to(sources / "bird" / "a.mp4")
    (split_root / "train" / "drum").mkdir()
    (split_root / "train" / "drum" / "a.mp4").symlink_to(sources / "drum" / "a.mp4")
    prepare(split_root, tmp_path / "out", SETTINGS)
    loaded = load_video_folder(tmp_path / "out")
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features["label"].names == ["bird", "drum"] and loaded["train"]["label"] == [0, 1]
    assert loaded["test"]["label"] == [0] and os.path.isfile(loaded["test"][0]["video"])
    # The prepared clip decodes through the processor like any file.
    assert torch.isfinite(PemtProcessor.from_model_config(CONFIG)(videos=loaded["test"][0]["video"])["pixel_values"]).all()

    # The training and evaluation commands take the prepared folder where they take a videofolder.
    args = DataArguments(train_dir=str(tmp_path / "out"))
    train, evaluation = load_raw_splits(args)
    assert train["video"] == loaded["train"]["video"] and evaluation["video"] == loaded["test"]["video"]
    assert load_evaluation_set(DataArguments(eval_dir=str(tmp_path / "out")))["video"] == loaded["test"]["video"]


@pytest.mark.parametrize("missing", ["{tmp}/no_such_folder", "{tmp}/no_such_list.csv", "./no_such_dir/clips"])
def test_a_missing_input_is_a_usage_error_naming_it_and_writes_nothing(tmp_path, capsys, missing):
    from pemt.cli import run

    missing = missing.format(tmp=tmp_path)
    out = tmp_path / "out"
    assert run("prepare", [missing, str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"pemt prepare: error: {missing}: no such file or folder."]
    assert not out.exists()
    # Negative control: an existing folder is read (and prepared) by the same call.
    clip = tmp_path / "present"
    clip.mkdir()
    write_media(clip / "a.mp4", seconds=1.0, size=(32, 32), sample_rate=8000)
    assert run("prepare", [str(clip), str(out), "--model_config", "tiny"]) == 0
    assert (out / "manifest.jsonl").exists()
