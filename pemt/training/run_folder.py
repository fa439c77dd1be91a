"""A run owns its output folder: which run a folder and its checkpoints belong to, and which checkpoint to resume.

`run.json` in the output folder records the run's settings (its *fingerprint*: the options that decide what the
run computes) and whether it finished. Every checkpoint holds `pemt_checkpoint.json`, written by the main process
only after all processes finished writing the checkpoint, with the fingerprint and the model config: a checkpoint
folder without it is incomplete (killed while saving) and is never resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import PemtUsageError


RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"  # what Accelerate's automatic checkpoint naming writes under the project folder
CHECKPOINT_MARKER = "pemt_checkpoint.json"
HISTORY_FILE = "history.jsonl"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")

# Options that may change between a run and its resumption without changing what it computes up to the resumed
# step: how long to train, how often to log, evaluate and save, where things go, how data is read and reported.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "max_steps", "num_train_epochs",
        "logging_steps", "eval_steps", "checkpointing_steps", "checkpoints_total_limit", "dataloader_num_workers",
        "preprocessing_num_workers", "cache_dir", "report_to", "push_to_hub", "hub_model_id", "hub_private_repo",
        "no_progress_bar", "per_device_eval_batch_size", "num_temporal_views",
        # How the same computation is run (compiled kernels round differently, as thread counts do).
        "torch_compile", "torch_compile_backend", "torch_compile_mode",
    }
)


def run_fingerprint(*argument_groups: Any) -> dict[str, Any]:
    """The options of a run that decide what it computes (all but [`RESUMABLE_CHANGES`]), from its dataclasses."""
    fingerprint = {}
    for group in argument_groups:
        values = asdict(group) if is_dataclass(group) else dict(group)
        fingerprint.update({k: v for k, v in values.items() if k not in RESUMABLE_CHANGES})
    return json.loads(json.dumps(fingerprint, default=str))


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: recorded -> current` for every differing key, for error messages."""
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: {recorded.get(k, '(unset)')!r} there, {current.get(k, '(unset)')!r} now" for k in keys
            if recorded.get(k) != current.get(k)]


def _holds_a_run(output_dir: Path) -> str | None:
    """A description of the run in `output_dir`, or None when nothing of a run is there."""
    run_file = output_dir / RUN_FILE
    if run_file.is_file():
        try:
            finished = json.loads(run_file.read_text()).get("finished", False)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return f"a run whose {RUN_FILE} is unreadable"
        return "a finished run" if finished else "an unfinished run"
    if (output_dir / CHECKPOINTS_DIR).is_dir() and any((output_dir / CHECKPOINTS_DIR).iterdir()):
        return "checkpoints of another run"
    for name in ("model.safetensors", "config.json", HISTORY_FILE):
        if (output_dir / name).exists():
            return f"a saved model or training history ({name})"
    return None


def claim_output_dir(output_dir: Path, fingerprint: dict, resume: str | None, overwrite: bool) -> bool:
    """
    Checks that this run may use `output_dir` and says whether its old contents must be cleared first.

    A folder holding another run, or a finished one, is refused unless `overwrite` (start afresh: returns True) or
    `resume` (continue it: its recorded settings must match `fingerprint`). Runs on every process and writes
    nothing, so that all processes agree before the main one changes anything.
    """
    held = _holds_a_run(output_dir) if output_dir.is_dir() else None
    if held is None or overwrite:
        return held is not None
    checkpoints = output_dir / CHECKPOINTS_DIR
    strangers = sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("checkpoint_")) if checkpoints.is_dir() else []
    if strangers:
        # Accelerate's rotation deletes the oldest entries of this folder whatever they are (and fails on names
        # without a number).
        raise PemtUsageError(
            f"{checkpoints} holds {', '.join(strangers)}, which pemt did not write as a checkpoint of this run; move "
            "it elsewhere, or start afresh with --overwrite_output_dir."
        )
    if resume is None:
        raise PemtUsageError(
            f"--output_dir {output_dir} holds {held}. Continue it with --resume_from_checkpoint latest, start afresh "
            "there with --overwrite_output_dir, or choose another --output_dir."
        )
    run_file = output_dir / RUN_FILE
    if not run_file.is_file() and not complete_checkpoints(output_dir):
        raise PemtUsageError(
            f"--output_dir {output_dir} holds {held} with no complete checkpoint to resume; start afresh there with "
            "--overwrite_output_dir, or choose another --output_dir."
        )
    if run_file.is_file():
        recorded = json.loads(run_file.read_text()).get("fingerprint", {})
        changed = differences(recorded, fingerprint)
        if changed:
            raise PemtUsageError(
                f"--output_dir {output_dir} holds a run with other settings ({'; '.join(changed)}); resume it with "
                "its own settings, or use --overwrite_output_dir or another --output_dir."
            )
    return False


def clear_run(output_dir: Path) -> None:
    """Removes what a previous run left that this one would mix with (main process only)."""
    for name in (CHECKPOINTS_DIR, "logs"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in (RUN_FILE, HISTORY_FILE, "eval_results.json"):
        (output_dir / name).unlink(missing_ok=True)
    for path in output_dir.glob("run_summary_process*.json"):
        path.unlink()


def write_run_file(output_dir: Path, fingerprint: dict, finished: bool) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint, "finished": finished}, indent=2) + "\n")


def checkpoint_step(path: Path) -> int | None:
    """The step in a `checkpoint_<step>` folder name; None for anything else (e.g. `checkpoint_6.partial`)."""
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / CHECKPOINT_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def incomplete_entries(output_dir: Path) -> list[Path]:
    """Entries of the checkpoints folder that are not complete checkpoints (a save cut short by a kill)."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    complete = set(complete_checkpoints(output_dir))
    return sorted(p for p in root.iterdir() if p not in complete)


def resume_candidates(output_dir: Path, resume: str | None) -> list[Path]:
    """Checkpoints to try, best first: the newest complete one and then older ones for `"latest"` (an empty list
    starts afresh: a job restarted after a kill before its first checkpoint), the given folder otherwise."""
    if resume is None:
        return []
    if resume == "latest":
        return complete_checkpoints(output_dir)[::-1]
    path = Path(resume)
    if not (path / CHECKPOINT_MARKER).is_file():
        raise PemtUsageError(
            f"--resume_from_checkpoint {resume}: no {CHECKPOINT_MARKER} there, so not a complete pemt checkpoint "
            f"(complete ones in {output_dir}: {', '.join(p.name for p in complete_checkpoints(output_dir)) or 'none'})."
        )
    return [path]


def read_checkpoint_marker(path: Path) -> dict:
    return json.loads((path / CHECKPOINT_MARKER).read_text())


def check_checkpoint_belongs(path: Path, fingerprint: dict, model_config: dict | None) -> None:
    """Raises when the checkpoint at `path` was written by a run with other settings or (unless `model_config` is
    None) another model config."""
    marker = read_checkpoint_marker(path)
    changed = differences(marker.get("fingerprint", {}), fingerprint)
    if model_config is not None:
        changed += differences(_comparable(marker.get("model_config", {})), _comparable(model_config))
    if changed:
        raise PemtUsageError(
            f"Checkpoint {path} belongs to a run with other settings ({'; '.join(changed)}); resume with that run's "
            "settings, or start afresh with --overwrite_output_dir or another --output_dir."
        )


def _comparable(config: dict) -> dict:
    """A model config without the fields that do not change the model (library version)."""
    normalised = json.loads(json.dumps(config, default=str))  # as written to JSON: int keys become strings
    return {k: v for k, v in normalised.items() if k not in ("transformers_version",)}


__all__ = [
    "CHECKPOINTS_DIR", "CHECKPOINT_MARKER", "HISTORY_FILE", "RUN_FILE", "check_checkpoint_belongs", "checkpoint_step",
    "claim_output_dir", "clear_run", "complete_checkpoints", "incomplete_entries", "resume_candidates",
    "run_fingerprint", "write_run_file",
]
