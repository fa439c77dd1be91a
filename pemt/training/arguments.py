"""The options of `pemt pretrain`, `pemt finetune` and `pemt evaluate`, as dataclasses read by `HfArgumentParser`.

One set of dataclasses serves all three commands; each command parses the groups it needs:

| command | groups |
|---|---|
| `pemt pretrain` | [`ModelArguments`], [`DataArguments`], [`PemtTrainingArguments`] |
| `pemt finetune` | the same plus [`ClassificationArguments`] |
| `pemt evaluate` | [`EvaluationArguments`], [`DataArguments`] (its evaluation fields) |

Names follow the `transformers` examples where they mean the same thing. Values are checked when parsed (ranges,
conflicting pairs), so a bad command line fails before any data is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

from transformers import HfArgumentParser
from transformers.trainer_utils import SchedulerType

from ..errors import PemtUsageError, usage_exit
from ..model.configuration_pemt import PRESET_NAMES, PemtConfig
from .data_setup import DataArguments

REPORT_TARGETS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")
DEFAULT_MAX_STEPS = 200


@dataclass
class ModelArguments:
    """Which model to build or start from."""

    model_config: str = field(
        default="small",
        metadata={"help": f"A preset ({', '.join(PRESET_NAMES)}), a preset JSON file, or a config.json / model folder."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'Config fields to override, e.g. "num_segments=4,cnn_checkpointing=true" '
                  "(PreTrainedConfig.update_from_string)."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A pretrained PEMT folder or Hub id to start from (default: from scratch with --model_config)."},
    )


@dataclass
class PemtTrainingArguments:
    """How to train: steps, optimiser, schedule, precision, checkpoints, logging and publishing."""

    output_dir: str = field(metadata={"help": "Where checkpoints, logs, plots and the final model go; a run owns it."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh in an output_dir that holds another or a finished run (its "
                                 "checkpoints and history are deleted)."}
    )
    max_steps: int | None = field(default=None, metadata={"help": f"Optimiser steps (default {DEFAULT_MAX_STEPS})."})
    num_train_epochs: float | None = field(
        default=None, metadata={"help": "Train for this many passes over the training set instead of --max_steps."}
    )
    per_device_train_batch_size: int = field(default=8)
    per_device_eval_batch_size: int = field(default=16)
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.01)
    optimizer: Literal["adamw", "adam"] = field(
        default="adamw", metadata={"help": "adam: Adam with L2 weight decay, the authors' fine-tuning optimiser."}
    )
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Epsilon of Adam / AdamW (the authors': 1e-6)."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "A transformers schedule: " + ", ".join(t.value for t in SchedulerType) + "."}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "Default: 10%% of the training steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: none)."})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no")
    torch_compile: bool = field(
        default=False,
        metadata={"help": "Compile the CNNs with torch.compile (not the whole model, whose segment masks make "
                  "data-dependent shapes); see pemt.model.compile_pemt."},
    )
    torch_compile_backend: str | None = field(default=None, metadata={"help": "torch.compile backend (default inductor)."})
    torch_compile_mode: str | None = field(default=None, metadata={"help": "torch.compile mode (default, reduce-overhead, max-autotune)."})
    seed: int = field(default=0)
    checkpointing_steps: int = field(default=50, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": 'A checkpoint folder, or "latest" for the newest complete one in output_dir '
                  "(none yet: start afresh)."},
    )
    logging_steps: int = field(default=5)
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0: only at the end)."})
    dataloader_num_workers: int = field(default=0)
    report_to: str = field(
        default="tensorboard",
        metadata={"help": f"Trackers, comma-separated ({', '.join(REPORT_TARGETS)}), \"all\" or \"none\"."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model (with its processor, and for a classifier its card) to --hub_model_id at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository for --push_to_hub (user/name)."})
    hub_private_repo: bool = field(default=False)
    no_progress_bar: bool = field(default=False)

    def __post_init__(self) -> None:
        positive = {
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "checkpointing_steps": self.checkpointing_steps,
            "checkpoints_total_limit": self.checkpoints_total_limit,
            "logging_steps": self.logging_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise PemtUsageError(f"--{name} is {value}; it must be 1 or more.")
        if self.max_steps is not None and self.num_train_epochs is not None:
            raise PemtUsageError("--max_steps and --num_train_epochs both given; give one of them.")
        if self.max_steps is not None and self.max_steps < 1:
            raise PemtUsageError(f"--max_steps is {self.max_steps}; train for 1 step or more.")
        if self.num_train_epochs is not None and not (self.num_train_epochs > 0 and math.isfinite(self.num_train_epochs)):
            raise PemtUsageError(f"--num_train_epochs is {self.num_train_epochs}; it must be above 0.")
        for name in ("eval_steps", "dataloader_num_workers"):
            if getattr(self, name) < 0:
                raise PemtUsageError(f"--{name} is {getattr(self, name)}; it must be 0 or more.")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise PemtUsageError(f"--warmup_steps is {self.warmup_steps}; it must be 0 or more.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise PemtUsageError(f"--learning_rate is {self.learning_rate}; it must be above 0.")
        if self.max_grad_norm < 0:
            raise PemtUsageError(f"--max_grad_norm is {self.max_grad_norm}; give 0 (no clipping) or a positive norm.")
        schedules = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in schedules:
            raise PemtUsageError(f"--lr_scheduler_type {self.lr_scheduler_type!r} is unknown; choose one of {', '.join(schedules)}.")
        if self.lr_scheduler_type == "reduce_lr_on_plateau":
            raise PemtUsageError("--lr_scheduler_type reduce_lr_on_plateau needs a metric each step; choose a step schedule.")
        self.report_to_list()  # checks the names
        if self.push_to_hub and not self.hub_model_id:
            raise PemtUsageError("--push_to_hub needs --hub_model_id user/name.")

    def report_to_list(self) -> list[str]:
        """The trackers to log to, as Accelerate's `log_with` takes them."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        if names in (["none"], []):
            return []
        if names == ["all"]:
            return ["all"]
        unknown = [name for name in names if name not in REPORT_TARGETS]
        if unknown:
            raise PemtUsageError(
                f"--report_to {', '.join(unknown)} is unknown; choose from {', '.join(REPORT_TARGETS)}, all or none."
            )
        return names

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimiser steps of the run: --max_steps, or --num_train_epochs passes over `batches_per_epoch` batches."""
        if self.num_train_epochs is None:
            return self.max_steps if self.max_steps is not None else DEFAULT_MAX_STEPS
        steps_per_epoch = math.ceil(batches_per_epoch / self.gradient_accumulation_steps)
        return max(1, math.ceil(self.num_train_epochs * steps_per_epoch))


@dataclass
class ClassificationArguments:
    """Fine-tuning for classification."""

    modality: Literal["audio-visual", "visual", "audio"] = field(
        default="audio-visual", metadata={"help": "Inputs the classifier reads."}
    )
    problem_type: Literal["single_label_classification", "multi_label_classification"] = field(
        default="single_label_classification",
        metadata={"help": "multi_label trains with binary cross-entropy on one-hot targets and is evaluated by mAP."},
    )
    linear_probe: bool = field(default=False, metadata={"help": "Freeze the backbone; train the heads only."})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the heads."})
    num_temporal_views: int = field(default=1, metadata={"help": "Views per clip in the final evaluation."})
    num_spatial_crops: int = field(
        default=1, metadata={"help": "Spatial views (3: left, centre, right crops) per temporal view in the final evaluation."}
    )
    classifier_head: Literal["clip", "segment", "cnn"] | None = field(
        default=None,
        metadata={"help": "clip, segment (the authors' per-segment head) or cnn (the CNN alone); default: the model's."},
    )
    authors_protocol: Literal["kinetics-sounds", "ucf101", "esc50"] | None = field(
        default=None,
        metadata={"help": "The authors' downstream setting (head, modality, segments, loss, learning rates, optimiser, "
                  "schedule, test views of their Kinetics-Sounds, UCF101 or ESC-50 config); options given explicitly win."},
    )

    def __post_init__(self) -> None:
        for name in ("num_temporal_views", "num_spatial_crops"):
            if getattr(self, name) < 1:
                raise PemtUsageError(f"--{name} is {getattr(self, name)}; it must be 1 or more.")
        if not (self.head_learning_rate > 0 and math.isfinite(self.head_learning_rate)):
            raise PemtUsageError(f"--head_learning_rate is {self.head_learning_rate}; it must be above 0.")


@dataclass
class EvaluationArguments:
    """`pemt evaluate`: which model, how many views, where the results go."""

    model: str = field(metadata={"help": "A fine-tuned model folder (with its processor)."})
    num_temporal_views: int = field(default=1, metadata={"help": "Views per clip whose scores are averaged."})
    num_spatial_crops: int = field(
        default=1, metadata={"help": "Spatial views per temporal view (3: left, centre, right; the authors' 10 x 3)."}
    )
    batch_size: int = field(default=4)
    output_dir: str | None = field(default=None, metadata={"help": "Where results go (default: the model folder)."})

    def __post_init__(self) -> None:
        for name in ("num_temporal_views", "num_spatial_crops", "batch_size"):
            if getattr(self, name) < 1:
                raise PemtUsageError(f"--{name} is {getattr(self, name)}; it must be 1 or more.")


class PemtArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose errors are one line naming the problem and pointing at `--help` (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        usage_exit(self.prog, message)


def parse_arguments(prog: str, description: str, groups: tuple, argv: list[str] | None, **defaults) -> tuple:
    """Parses `argv` into one instance of each dataclass in `groups`; `defaults` change option defaults per command
    (pretraining and fine-tuning want different learning rates)."""
    parser = PemtArgumentParser(groups, prog=prog, description=description)
    if defaults:
        parser.set_defaults(**defaults)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


def load_model_config(model_args: ModelArguments, **fields) -> PemtConfig:
    """The config named by `--model_config` (a preset name, a preset file, or a config.json or model folder), with
    `fields` set and then `--config_overrides` applied through `PreTrainedConfig.update_from_string`."""
    source = model_args.model_config
    path = Path(source)
    if source in PRESET_NAMES:
        config = PemtConfig.from_preset(source, **fields)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise PemtUsageError(f"--model_config {source}: the folder has no config.json.")
        config = PemtConfig.from_pretrained(path, **fields)
    elif path.is_file():
        config = _config_from_json_file(path, fields)
    else:
        raise PemtUsageError(
            f"--model_config {source!r} is neither a preset ({', '.join(PRESET_NAMES)}) nor an existing file or folder."
        )
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
            config.check_values()
        except (ValueError, TypeError) as err:
            raise PemtUsageError(
                f"--config_overrides {model_args.config_overrides!r}: {err} (give key=value pairs of PemtConfig "
                "fields, separated by commas)."
            ) from None
    return config


def _config_from_json_file(path: Path, fields: dict) -> PemtConfig:
    import json

    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PemtUsageError(f"--model_config {path}: not a JSON file ({err}).") from None
    if isinstance(content, dict) and "config" in content:
        return PemtConfig.from_preset(path, **fields)  # a preset file
    if not isinstance(content, dict) or content.get("model_type") != "pemt":
        raise PemtUsageError(
            f"--model_config {path}: neither a preset file (with a \"config\" object) nor a PEMT config.json "
            "(\"model_type\": \"pemt\")."
        )
    return PemtConfig.from_pretrained(path, **fields)
