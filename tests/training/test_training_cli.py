"""The training commands as a user meets them: one-line errors with exit status 2 (usage) or 1 (runtime) and no
traceback unless --debug, values refused before any work, bf16 on a CPU stopped before a NaN model is saved, a
`datasets` data set by name, pushing at the end, trackers, and the Accelerate launcher that starts fewer processes
than asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from pemt import PemtConfig
from pemt.cli import main as pemt_main
from pemt.training.arguments import ModelArguments, load_model_config
from pemt.training.data_setup import DataArguments, load_raw_splits

from hub_server import hub_server  # noqa: F401  (a fixture)
from test_finetuning import pretrained_tiny  # noqa: F401  (a fixture)


def run_pemt(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        pemt_main(list(argv))
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max_steps", "0"], "--max_steps is 0; train for 1 step or more"),
        (["--max_steps", "-5"], "--max_steps is -5"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps is 0; it must be 1 or more"),
        (["--logging_steps", "0"], "--logging_steps is 0"),
        (["--max_steps", "5", "--num_train_epochs", "2"], "give one of them"),
        (["--lr_scheduler_type", "cosin"], "--lr_scheduler_type 'cosin' is unknown; choose one of linear, cosine"),
        (["--report_to", "tensorbord"], "--report_to tensorbord is unknown"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--mixed_precision", "fp8"], "invalid choice: 'fp8'"),
        (["--max_stepz", "3"], "unrecognized arguments: --max_stepz 3"),
        (["--model_config", "nano"], "--model_config 'nano' is neither a preset"),
        (["--config_overrides", "hiden_size=8"], "hiden_size"),
        (["--config_overrides", "hidden_size=30"], "hidden_size (30) must be divisible by num_attention_heads"),
        (["--train_dir", "a", "--train_file", "b.csv"], "--train_dir and --train_file both name training clips"),
    ],
)
def test_bad_values_are_one_line_usage_errors_before_any_work(capsys, tmp_path, argv, expected):
    output_dir = tmp_path / "out"
    code, err = run_pemt(capsys, "pretrain", "--output_dir", str(output_dir), "--model_config", "tiny", *argv)
    assert code == 2, err
    assert expected in err, err
    assert err.count("\n") == 1 and err.startswith("pemt pretrain: error: ") and "Traceback" not in err
    assert not output_dir.exists(), "a refused command must not touch the output folder"


def test_a_runtime_error_is_one_line_with_status_1_and_debug_shows_the_traceback(capsys, tmp_path):
    code, err = run_pemt(capsys, "evaluate", "--model", str(tmp_path / "missing"), "--eval_dir", str(tmp_path))
    assert code == 2 and "missing: no config.json there; give a fine-tuned model folder or a Hub id" in err, err
    # A model folder whose weights are missing fails at run time.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(PemtConfig.from_preset("tiny").to_dict()))
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--eval_dir", str(tmp_path / "model")]
    code, err = run_pemt(capsys, *argv)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("pemt evaluate: error: ") and "--debug" in err, err
    assert "Traceback" not in err
    code, err = run_pemt(capsys, *argv, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err


def test_a_finished_run_folder_is_refused_with_the_ways_out(capsys, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": {}, "finished": True}))
    (tmp_path / "model.safetensors").write_bytes(b"weights of an earlier run")
    code, err = run_pemt(capsys, "pretrain", "--output_dir", str(tmp_path), "--model_config", "tiny", "--train_dir", "x")
    assert code == 2 and "holds a finished run" in err and "--overwrite_output_dir" in err, err
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights of an earlier run"


def finetune_cli(output_dir: Path, demo_data: Path, cache: Path, model: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemt.cli", "finetune", "--output_dir", str(output_dir), "--train_dir", str(demo_data),
         "--cache_dir", str(cache), "--model_name_or_path", model, "--max_steps", "10",
         "--per_device_train_batch_size", "8", "--report_to", "none", "--no_progress_bar", *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_model(tmp_path, demo_data, preprocessing_cache, pretrained_tiny):
    # A learning rate of 1e30 makes the weights, then the loss, non-finite within a few steps.
    output_dir = tmp_path / "diverged"
    done = finetune_cli(output_dir, demo_data, preprocessing_cache, pretrained_tiny, "--learning_rate", "1e30",
                        "--head_learning_rate", "1e30")
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pemt finetune: error: Training stopped at step"), last
    assert "Traceback" not in done.stderr
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "README.md").exists()
    assert json.loads((output_dir / "run.json").read_text())["finished"] is False


def test_bf16_on_cpu_trains_finite_weights(tmp_path, demo_data, preprocessing_cache, pretrained_tiny):
    # oneDNN's bf16 Conv3d backward gives non-finite gradients at the tiny preset's temporal sizes (torch 2.13, CPU);
    # the visual CNN runs in float32 there under autocast, so the run finishes with finite weights.
    output_dir = tmp_path / "bf16"
    done = finetune_cli(output_dir, demo_data, preprocessing_cache, pretrained_tiny, "--mixed_precision", "bf16")
    assert done.returncode == 0, done.stderr[-2000:]
    weights = load_file(output_dir / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


# -- data sets by name, pushing, trackers ----------------------------------------------------------------------------


def write_dataset_folder(root: Path, demo_data: Path) -> Path:
    """A local `datasets` folder (JSON Lines per split), as a Hub data set repository would hold: training clips of
    three classes; test clips of two of them, so that the test split's own class numbering differs."""
    root.mkdir(parents=True)
    classes = sorted(p.name for p in (demo_data / "train").iterdir())[:3]
    for split, source, wanted in (("train", "train", classes), ("test", "test", classes[1:])):
        rows = [
            {"clip": str(path), "category": cls}
            for cls in wanted
            for path in sorted((demo_data / source / cls).glob("*.mp4"))[:4]
        ]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_dataset_name_loads_splits_numbered_by_the_training_classes(tmp_path, demo_data):
    folder = write_dataset_folder(tmp_path / "my_dataset", demo_data)
    args = DataArguments(dataset_name=str(folder), video_column="clip", label_column="category")
    train, evaluation = load_raw_splits(args)
    names = train.features["label"].names
    assert len(names) == 3 and evaluation.features["label"].names == names
    test_rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert [names[i] for i in evaluation["label"]] == [row["category"] for row in test_rows]
    # Negative control: numbered by its own two classes, the test split would start at 0, not 1.
    own = datasets.load_dataset(str(folder))["test"].class_encode_column("category")
    assert own["category"][0] == 0 and evaluation["label"][0] == 1


def test_dataset_name_errors_name_the_missing_column(tmp_path, demo_data):
    folder = write_dataset_folder(tmp_path / "my_dataset", demo_data)
    with pytest.raises(ValueError, match=r"has no column 'video'.*--video_column"):
        load_raw_splits(DataArguments(dataset_name=str(folder), label_column="category"))


def test_finetune_from_a_named_dataset_pushes_to_the_hub(hub_server, tmp_path, demo_data, preprocessing_cache, pretrained_tiny):  # noqa: F811
    from huggingface_hub import HfApi

    from pemt.training import finetune

    folder = write_dataset_folder(tmp_path / "my_dataset", demo_data)
    output_dir = tmp_path / "model"
    results = finetune.main(
        ["--output_dir", str(output_dir), "--dataset_name", str(folder), "--video_column", "clip",
         "--label_column", "category", "--cache_dir", str(preprocessing_cache), "--model_name_or_path", pretrained_tiny,
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--no_progress_bar",
         "--push_to_hub", "--hub_model_id", "tester/pemt-named-dataset"]
    )
    assert results["num_clips"] == 8
    files = {entry.path for entry in HfApi().list_repo_tree("tester/pemt-named-dataset")}
    assert {"model.safetensors", "config.json", "processor_config.json", "README.md"} <= files
    assert not list((output_dir / "logs").rglob("events.out.tfevents.*")), "--report_to none wrote TensorBoard logs"


# -- model configs -------------------------------------------------------------------------------------------------


def test_config_overrides_go_through_update_from_string(tmp_path):
    config = load_model_config(ModelArguments(model_config="tiny", config_overrides="num_segments=4,cnn_checkpointing=true"))
    assert config.num_segments == 4 and config.cnn_checkpointing is True
    preset_copy = tmp_path / "mine.json"
    content = json.loads((Path(__file__).parents[2] / "pemt/model/presets/tiny.json").read_text())
    content["config"]["hidden_size"] = 48
    preset_copy.write_text(json.dumps(content))
    assert load_model_config(ModelArguments(model_config=str(preset_copy))).hidden_size == 48
    not_a_config = tmp_path / "other.json"
    not_a_config.write_text(json.dumps({"hidden_size": 48}))
    with pytest.raises(ValueError, match="neither a preset file .* nor a PEMT config.json"):
        load_model_config(ModelArguments(model_config=str(not_a_config)))


# -- the launcher --------------------------------------------------------------------------------------------------


def test_accelerate_launch_on_cpu_that_starts_one_process_is_explained(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        from pemt.training.arguments import PemtTrainingArguments
        from pemt.training.loop import build_accelerator

        accelerator = build_accelerator(PemtTrainingArguments(output_dir=%r, report_to="none"))
        print("processes", accelerator.num_processes)
        """ % str(tmp_path / "out")
    ))
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("processes 1") == 1, done.stdout
    assert "asked for 2 processes but started one" in done.stdout + done.stderr
    assert "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2" in done.stdout + done.stderr


# -- evaluation split across processes -------------------------------------------------------------------------------


def test_two_process_evaluation_scores_each_clip_once(tmp_path, demo_data, preprocessing_cache, pretrained_tiny):
    import torch
    from accelerate import Accelerator

    from tests.training.test_pretraining import two_cpu_processes_launcher

    from pemt import PemtForAudioVisualClassification, PemtProcessor
    from pemt.data.clips import ClipDataset, stack_clips
    from pemt.training.finetune import evaluate_preprocessed

    output_dir = tmp_path / "two"
    # 24 test clips in batches of 5 per process: the last round is uneven, so Accelerate repeats clips to even it out.
    done = subprocess.run(
        [sys.executable, *two_cpu_processes_launcher(),
         "-m", "pemt.training.finetune", "--output_dir", str(output_dir), "--train_dir", str(demo_data),
         "--cache_dir", str(preprocessing_cache), "--model_name_or_path", pretrained_tiny, "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "5", "--report_to", "none",
         "--problem_type", "multi_label_classification", "--no_progress_bar"],
        capture_output=True, text=True, timeout=400, env={**os.environ, "ACCELERATE_USE_CPU": "true"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (output_dir / "history.jsonl").read_text().splitlines()]
    two_process_map = next(row["eval/mAP"] for row in rows if "eval/mAP" in row)

    # The same weights evaluated by one process over every clip once.
    model = PemtForAudioVisualClassification.from_pretrained(output_dir)
    processor = PemtProcessor.from_pretrained(output_dir)
    _, raw_evaluation = load_raw_splits(DataArguments(train_dir=str(demo_data)))
    evaluation = ClipDataset(raw_evaluation, processor, training=False)  # what the run evaluated on (on the fly)
    assert len(evaluation) == 24

    def mean_ap(dataset) -> float:
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=stack_clips)
        torch.manual_seed(0)
        return evaluate_preprocessed(model, Accelerator(), loader)["mAP"]

    assert two_process_map == pytest.approx(mean_ap(evaluation), abs=1e-6)
    # Negative control: counting the repeated clips (what a plain gather would do) gives another figure.
    padded = torch.utils.data.ConcatDataset([evaluation, torch.utils.data.Subset(evaluation, range(6))])
    assert abs(mean_ap(padded) - two_process_map) > 1e-4
