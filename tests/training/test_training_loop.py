"""The training loop on a toy model (no media, a second per run): exact resumption past truncated checkpoints, runs
that own their output folder, checkpoints that must match the run, the stop on non-finite losses, the schedule and
epoch options, and the launcher check."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.utils import ModelOutput

from pemt.errors import NonFiniteLossError, PemtUsageError
from pemt.training.arguments import PemtTrainingArguments
from pemt.training.loop import (
    TrainingLoop,
    build_accelerator,
    finish_output_dir,
    launcher_requested_processes,
    prepare_output_dir,
    weights_digest,
)
from pemt.training.run_folder import CHECKPOINT_MARKER, complete_checkpoints

CLIPS, BATCH = 20, 4  # five batches per epoch


class ToyConfig:
    def __init__(self, width: int = 6):
        self.width = width

    def to_dict(self) -> dict:
        return {"width": self.width}


class ToyModel(torch.nn.Module):
    """A regression with dropout (so that resumption must restore the RNG) that can be told to return a NaN loss or
    an infinite gradient at a given call."""

    def __init__(self, width: int = 6, nan_at_call: int | None = None, inf_grad_at_call: int | None = None):
        super().__init__()
        self.config = ToyConfig(width)
        self.linear = torch.nn.Linear(width, 1)
        self.dropout = torch.nn.Dropout(0.2)
        self.nan_at_call, self.inf_grad_at_call, self.calls = nan_at_call, inf_grad_at_call, 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> ModelOutput:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(self.linear(self.dropout(x)).squeeze(-1), y)
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        if self.calls == self.inf_grad_at_call:
            # sqrt at 0: a finite loss whose gradient is infinite (as a broken backward kernel gives).
            loss = loss + torch.sqrt(self.linear.weight.sum() * 0.0)
        return ModelOutput(loss=loss)


def toy_data() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(CLIPS, 6, generator=generator)
    y = x @ torch.arange(6.0) + 0.1 * torch.randn(CLIPS, generator=generator)
    return [{"x": x[i], "y": y[i]} for i in range(CLIPS)]


def collate(rows: list[dict]) -> dict:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def toy_args(output_dir: Path, **changes) -> PemtTrainingArguments:
    options = dict(
        output_dir=str(output_dir), max_steps=8, per_device_train_batch_size=BATCH, learning_rate=0.05,
        checkpointing_steps=2, checkpoints_total_limit=3, logging_steps=1, report_to="none", no_progress_bar=True,
        seed=5,
    )
    return PemtTrainingArguments(**{**options, **changes})


def run_toy(output_dir: Path, model: ToyModel | None = None, fingerprint: dict | None = None, **changes) -> TrainingLoop:
    """Claims the folder, trains, and marks the run finished, as `pemt pretrain` does around its model."""
    args = toy_args(output_dir, **changes)
    fingerprint = fingerprint or {"toy": 1}
    accelerator = build_accelerator(args)
    prepare_output_dir(accelerator, args, fingerprint)
    torch.manual_seed(args.seed)
    loop = TrainingLoop(accelerator, model or ToyModel(), args, toy_data(), collate_fn=collate, fingerprint=fingerprint)
    loop.train()
    finish_output_dir(accelerator, args, fingerprint)
    return loop


def history(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "history.jsonl").read_text().splitlines()]


# -- checkpoints and resumption -----------------------------------------------------------------------------------


def test_checkpoints_are_named_by_step_and_rotated_by_accelerate(tmp_path):
    run_toy(tmp_path)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_4", "checkpoint_6", "checkpoint_8"]
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_6" / "custom_checkpoint_0.pkl", weights_only=True)
    assert state == {"global_step": 6, "samples_seen": 6 * BATCH}


def test_resume_skips_a_truncated_newest_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    straight = run_toy(tmp_path / "straight")
    resumed_dir = tmp_path / "resumed"
    run_toy(resumed_dir)
    checkpoints = resumed_dir / "checkpoints"
    # A kill while writing step 8: the newest folder holds part of its files and no completion marker ...
    (checkpoints / "checkpoint_8" / CHECKPOINT_MARKER).unlink()
    # ... and an older kind of leftover that once blocked resumption ("invalid literal for int()").
    shutil.copytree(checkpoints / "checkpoint_6", checkpoints / "checkpoint_7.partial")
    # The newest complete checkpoint is damaged (a truncated weights file): resumption falls back to step 4.
    weights = checkpoints / "checkpoint_6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])

    resumed = run_toy(resumed_dir, resume_from_checkpoint="latest")
    assert resumed.state.global_step == 8
    assert weights_digest(resumed.unwrapped_model()) == weights_digest(straight.unwrapped_model())
    # Negative control: the damaged checkpoint is really unusable, and stopping at step 6 would give other weights.
    assert weights_digest(run_toy(tmp_path / "short", max_steps=6).unwrapped_model()) != weights_digest(
        straight.unwrapped_model()
    )
    assert [row["step"] for row in history(resumed_dir) if "train/loss" in row] == list(range(1, 9))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_4", "checkpoint_6", "checkpoint_8"]


def test_latest_with_no_checkpoint_yet_starts_afresh(tmp_path):
    loop = run_toy(tmp_path, resume_from_checkpoint="latest", max_steps=3)
    assert loop.state.global_step == 3


def test_a_checkpoint_of_other_settings_is_refused_before_any_work(tmp_path):
    run_toy(tmp_path / "a", max_steps=2)
    args = toy_args(tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "checkpoint_2"))
    with pytest.raises(PemtUsageError, match=r"checkpoint_2 belongs to a run with other settings \(toy: 1 there, 2 now\)"):
        prepare_output_dir(build_accelerator(args), args, {"toy": 2})
    assert not (tmp_path / "b").exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    run_toy(tmp_path / "a", max_steps=2)
    with pytest.raises(PemtUsageError, match=r"width: 6 there, 7 now"):
        run_toy(tmp_path / "b", model=ToyModel(width=7),
                resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "checkpoint_2"))


# -- run folders ---------------------------------------------------------------------------------------------------


def test_a_finished_run_is_not_overwritten_or_rotated_away(tmp_path):
    run_toy(tmp_path, max_steps=4)
    before = sorted(p.name for p in complete_checkpoints(tmp_path))
    with pytest.raises(PemtUsageError, match="holds a finished run.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        run_toy(tmp_path, max_steps=4)
    assert sorted(p.name for p in complete_checkpoints(tmp_path)) == before == ["checkpoint_2", "checkpoint_4"]
    # Another run's settings: resuming it is refused too, naming what differs.
    with pytest.raises(PemtUsageError, match=r"toy: 1 there, 2 now"):
        run_toy(tmp_path, fingerprint={"toy": 2}, resume_from_checkpoint="latest")
    assert sorted(p.name for p in complete_checkpoints(tmp_path)) == before
    # Asked for: start afresh.
    loop = run_toy(tmp_path, max_steps=2, overwrite_output_dir=True)
    assert loop.state.global_step == 2
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_2"]
    assert [row["step"] for row in history(tmp_path) if "train/loss" in row] == [1, 2]


def test_foreign_checkpoints_without_a_run_file_block_a_new_run(tmp_path):
    run_toy(tmp_path, max_steps=2)
    (tmp_path / "run.json").unlink()
    with pytest.raises(PemtUsageError, match="checkpoints of another run"):
        run_toy(tmp_path, max_steps=2)


def test_entries_accelerate_would_rotate_away_are_refused_and_kept(tmp_path):
    run_toy(tmp_path, max_steps=2)
    old = tmp_path / "checkpoints" / "step_1.partial"  # e.g. left by an earlier pemt version
    old.mkdir()
    for resume in (None, "latest"):
        with pytest.raises(PemtUsageError, match=r"holds step_1.partial, which pemt did not write"):
            run_toy(tmp_path, max_steps=4, resume_from_checkpoint=resume)
    assert old.is_dir() and [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_2"]


# -- non-finite losses ---------------------------------------------------------------------------------------------


def test_a_nan_loss_stops_training_before_anything_is_saved(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 5: the loss is nan.*checkpoint_4\) is intact"):
        run_toy(tmp_path, model=ToyModel(nan_at_call=5))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_4"]
    assert [row["step"] for row in history(tmp_path)] == [1, 2, 3, 4]
    for checkpoint in complete_checkpoints(tmp_path):
        for name, tensor in load_file(checkpoint / "model.safetensors").items():
            assert torch.isfinite(tensor).all(), (checkpoint, name)
    assert json.loads((tmp_path / "run.json").read_text())["finished"] is False


def test_an_infinite_gradient_stops_training(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 3: the gradient norm is (inf|nan)"):
        run_toy(tmp_path, model=ToyModel(inf_grad_at_call=3))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_2"]


def test_a_finite_run_is_not_stopped(tmp_path):
    # Negative control for the two tests above: the same model without injected faults trains to the end.
    assert run_toy(tmp_path, model=ToyModel()).state.global_step == 8


# -- schedule and length -------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    name: str
    expected: list[float]


@pytest.mark.parametrize(
    "schedule",
    [
        # After optimiser step k of 6 with 2 warm-up steps (the logged rate is the one for the next step).
        Schedule("linear", [0.025, 0.05, 0.0375, 0.025, 0.0125, 0.0]),
        Schedule("constant_with_warmup", [0.025, 0.05, 0.05, 0.05, 0.05, 0.05]),
    ],
    ids=lambda s: s.name,
)
def test_the_schedule_is_the_one_asked_for(tmp_path, schedule):
    run_toy(tmp_path, max_steps=6, warmup_steps=2, lr_scheduler_type=schedule.name)
    rates = [row["train/learning_rate"] for row in history(tmp_path)]
    assert rates == pytest.approx(schedule.expected)


def test_num_train_epochs_sets_the_length(tmp_path):
    loop = run_toy(tmp_path, max_steps=None, num_train_epochs=2.0)
    assert loop.state.global_step == 2 * CLIPS // BATCH


# -- the launcher --------------------------------------------------------------------------------------------------


def test_launcher_process_count_is_read_from_the_accelerate_command():
    cpu = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "train.py"]
    assert launcher_requested_processes(cpu) == 2
    assert launcher_requested_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=4", "x.py"]) == 4
    assert launcher_requested_processes(["python", "train.py", "--num_processes", "2"]) is None
    assert launcher_requested_processes(["bash"]) is None
