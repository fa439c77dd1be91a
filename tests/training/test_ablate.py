"""`pemt ablate` at a toy size: one suite end to end, the table's statistics against an independent computation, and a
second invocation that reuses the finished runs."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from pemt import PemtConfig
from pemt.data.demo import CLASSES, make_relation_data
from pemt.model.modeling_pemt import PemtModel
from pemt.training import ablate


@pytest.fixture(scope="module")
def relation_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("relation") / "data"
    return make_relation_data(
        root, pretrain_clips=8, pretrain_test_clips=4, train_per_class=2, test_per_class=3, seconds=2.0, workers=2
    )


TOY = ["--preset", "tiny", "--seeds", "2", "--pretraining_steps", "2", "--pretraining_batch_size", "4",
       "--finetuning_steps", "2", "--finetuning_batch_size", "4"]


def test_relation_data_layout(relation_data):
    info = json.loads((relation_data / "info.json").read_text())
    assert info["classes"] == ["matched", "unrelated"]
    assert len(list((relation_data / "pretrain" / "train" / "unlabelled").glob("*.mp4"))) == 8
    for relation in ("matched", "unrelated"):
        assert len(list((relation_data / "labelled" / "test" / relation).glob("*.mp4"))) == 3
    clips = {clip["file_name"]: clip for clip in info["clips"]}
    matched = clips["labelled/train/matched/matched_000.mp4"]
    unrelated = clips["labelled/train/unrelated/unrelated_000.mp4"]
    # A matched clip's picture is drawn from its own sound; an unrelated clip's from another draw.
    assert matched["picture"] == matched["sound"]
    assert unrelated["picture"]["base_pitch_hz"] != unrelated["sound"]["base_pitch_hz"]
    # Matched clips show the shape the demo pairs with their timbre; unrelated clips never do.
    pair = {c.timbre: c.shape for c in CLASSES}
    for clip in info["clips"]:
        assert (pair[clip["timbre"]] == clip["shape"]) == (clip["relation"] == "matched"), clip["file_name"]


def test_pretraining_suite_at_toy_size(tmp_path, relation_data):
    out = tmp_path / "ablation"
    # Two worker processes (the pool path); the second invocation below runs in this process.
    results = ablate.main(
        ["--suite", "pretraining", "--output_dir", str(out), "--data_dir", str(relation_data), "--jobs", "2", *TOY]
    )
    saved = json.loads((out / "results.json").read_text())
    table = saved["tables"]["pretraining"]
    assert list(table) == ["from scratch", ablate.PAPER.name]

    # Statistics recomputed independently from the per-seed rows.
    paper_rows = saved["runs"]["paper"]
    assert len(paper_rows) == 2
    for metric in ("cpp_accuracy", "mep_accuracy", "pair_head_top1", "linear_probe_top1", "finetuned_top1"):
        values = [row[metric] for row in paper_rows]
        assert all(0.0 <= v <= 1.0 for v in values), (metric, values)
        assert table[ablate.PAPER.name][metric]["mean"] == pytest.approx(statistics.mean(values))
        assert table[ablate.PAPER.name][metric]["sd"] == pytest.approx(statistics.stdev(values))
    # From scratch has no pretraining metrics; its probes are measured.
    scratch = table["from scratch"]
    assert scratch["cpp_accuracy"]["n"] == 0 and math.isnan(scratch["cpp_accuracy"]["mean"])
    assert scratch["pair_head_top1"]["n"] == 0
    assert scratch["finetuned_top1"]["n"] == 2
    expected_parameters = sum(p.numel() for p in PemtModel(PemtConfig.from_preset("tiny")).encoder.parameters())
    assert table[ablate.PAPER.name]["transformer_parameters"]["mean"] == expected_parameters
    markdown = (out / "results.md").read_text()
    assert "| from scratch |" in markdown and "n/a" in markdown

    # A second invocation reads the finished runs back instead of training again.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")}
    again = ablate.main(["--suite", "pretraining", "--output_dir", str(out), "--data_dir", str(relation_data), *TOY])
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")} == stamps
    assert again["tables"] == results["tables"]

    # A run killed part-way (its folders written, no result.json) is run again; the finished ones are not.
    killed = out / "runs" / "paper" / "seed_1" / "result.json"
    killed.unlink()
    ablate.main(["--suite", "pretraining", "--output_dir", str(out), "--data_dir", str(relation_data), *TOY])
    assert killed.exists()
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json") if p != killed} == {
        p: t for p, t in stamps.items() if p != killed
    }


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--task relation"):
        ablate.main(["--suite", "pretraining", "--output_dir", str(tmp_path), "--data_dir", str(tmp_path / "none"), *TOY])


def test_ablation_under_a_two_process_launch(tmp_path, relation_data):
    """The command a cluster user runs (`accelerate launch -m pemt.training.ablate`), here as two CPU processes: every
    run trains data-parallel in both, and the table is written once."""
    import os
    import subprocess
    import sys

    from tests.training.test_pretraining import two_cpu_processes_launcher

    out = tmp_path / "ablation"
    command = [
        sys.executable, *two_cpu_processes_launcher(), "-m", "pemt.training.ablate", "--suite", "pretraining", "--variants", "paper", "--output_dir", str(out),
        "--data_dir", str(relation_data), *TOY[:2], "--seeds", "1", *TOY[4:],
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for process in (0, 1):
        summary = json.loads((out / "runs" / "paper" / "seed_0" / "pretrained" / f"run_summary_process{process}.json").read_text())
        assert summary["num_processes"] == 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"].startswith("pemt ablate --suite pretraining")
    assert saved["tables"]["pretraining"][ablate.PAPER.name]["finetuned_top1"]["n"] == 1
