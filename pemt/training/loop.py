"""The training loop shared by pretraining and fine-tuning: a thin layer over Accelerate.

It owns what both need: the optimiser and schedule, gradient accumulation and clipping, mixed precision, logging to
TensorBoard and a JSONL history, a progress bar, and checkpoints that resume a killed run exactly (model,
optimiser, scheduler, RNG states and the position in the data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..model.configuration_pemt import PRESETS, PemtConfig

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.json"
HISTORY_FILE = "history.jsonl"


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options in the style of the `transformers` examples, shared by `pemt pretrain` and `pemt finetune`."""
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", required=True, help="Where checkpoints, logs, plots and the final model go.")
    group.add_argument("--model_config", default="small", help=f"A preset ({', '.join(PRESETS)}) or a config path.")
    group.add_argument(
        "--config_overrides", default="", help='Config fields to override, e.g. "num_segments=4,cnn_checkpointing=true".'
    )
    group.add_argument("--max_steps", type=int, default=200, help="Optimiser steps to train for.")
    group.add_argument("--per_device_train_batch_size", type=int, default=8)
    group.add_argument("--per_device_eval_batch_size", type=int, default=16)
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=1e-3)
    group.add_argument("--weight_decay", type=float, default=0.01)
    group.add_argument("--warmup_steps", type=int, default=None, help="Default: 10%% of max_steps.")
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--checkpointing_steps", type=int, default=50, help="Save a resumable checkpoint every N steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep only the newest N checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='A checkpoint directory, or "latest" for the newest in output_dir (nothing to resume: start afresh).',
    )
    group.add_argument("--logging_steps", type=int, default=5)
    group.add_argument("--eval_steps", type=int, default=0, help="Evaluate every N steps (0: only at the end).")
    group.add_argument("--dataloader_num_workers", type=int, default=0)
    group.add_argument("--no_progress_bar", action="store_true")


def load_model_config(name_or_path: str, **overrides) -> PemtConfig:
    """A preset name, a directory holding `config.json`, or a JSON file."""
    if name_or_path in PRESETS:
        return PemtConfig.from_preset(name_or_path, **overrides)
    if Path(name_or_path).exists():
        return PemtConfig.from_pretrained(name_or_path, **overrides)
    raise ValueError(f"--model_config {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a config path.")


def parse_overrides(text: str) -> dict:
    """`"a=1,b=true,c=similar"` -> `{"a": 1, "b": True, "c": "similar"}` (values read as JSON where they parse)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides item {item!r} is not key=value.")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


@dataclass
class TrainingState:
    """What is saved beside Accelerate's state: how far training got."""

    global_step: int = 0
    samples_seen: int = 0


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from, if any. "latest" with no checkpoint yet starts afresh (a job restarted after a
    kill before its first checkpoint)."""
    if resume is None:
        return None
    if resume == "latest":
        found = _checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no {STATE_FILE} there; not a complete checkpoint.")
    return path


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator of a run; build it first, so that data preparation can run on the main process first."""
    output_dir = Path(args.output_dir)
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # A sampler seeded per epoch makes the data order a function of (seed, epoch): resuming can skip to the
        # exact batch a killed run had reached.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters and buffers: equal digests mean bit-identical weights (used to check that
    data-parallel processes stay in step)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Trainer:
    r"""
    Runs `max_steps` optimiser steps of `model` on `train_dataset`.

    Args:
        accelerator (`accelerate.Accelerator`): from [`build_accelerator`].
        model (`torch.nn.Module`): returns an output with `loss`; `metric_names` name further scalar fields to log.
        args (`argparse.Namespace`): the options of [`add_training_arguments`].
        train_dataset (`torch.utils.data.Dataset`): items that `collate_fn` stacks into model inputs.
        collate_fn (`Callable`): list of items -> batch dict.
        metric_names (`Iterable[str]`): output fields averaged and logged beside the loss.
        prepare_batch (`Callable`, *optional*): what `collate_fn` gave -> model inputs, run in the training process
            right before the forward pass. Random augmentation belongs here rather than in `collate_fn`: the data loader
            fetches a batch ahead, so randomness spent there would fall on the wrong side of a checkpoint's saved RNG
            state, and a resumed run would diverge.
        parameter_groups (`list[dict]`, *optional*): optimiser groups (e.g. head and backbone learning rates).
        evaluate (`Callable`, *optional*): `(model, accelerator) -> dict of metrics`, run every `eval_steps` and at the end.
        drop_last (`bool`): drop the last incomplete batch (pretraining needs full batches of several clips).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        args: argparse.Namespace,
        train_dataset: Dataset,
        collate_fn: Callable,
        metric_names: Iterable[str] = (),
        prepare_batch: Callable[[dict], dict] | None = None,
        parameter_groups: list[dict] | None = None,
        evaluate: Callable | None = None,
        drop_last: bool = True,
    ):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.metric_names = tuple(metric_names)
        self.prepare_batch = prepare_batch or (lambda batch: batch)
        self.evaluate = evaluate
        self.accelerator = accelerator
        set_seed(args.seed)
        self.dataloader = DataLoader(
            train_dataset,
            batch_size=args.per_device_train_batch_size,
            shuffle=True,
            collate_fn=collate_fn,
            drop_last=drop_last,
            num_workers=args.dataloader_num_workers,
            # Starting an epoch's iterator draws a base seed from this generator; without one it would come from
            # the global RNG, which a resumed run restores *before* its first (skipping) iterator starts while the
            # killed run had drawn it before the checkpoint, so every later mask, swap and crop would differ.
            generator=torch.Generator().manual_seed(args.seed),
        )
        if len(self.dataloader) == 0:
            raise ValueError(
                f"The training set ({len(train_dataset)} clips) gives no full batch of "
                f"{args.per_device_train_batch_size}; lower --per_device_train_batch_size."
            )
        groups = parameter_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
        # Post-LN Transformers diverge or stall without a warm-up at these learning rates; 10% is BERT's convention.
        warmup = args.warmup_steps if args.warmup_steps is not None else math.ceil(0.1 * args.max_steps)
        # The scheduler is stepped once per process per optimiser step by Accelerate's wrapper, which multiplies
        # by the process count; the totals given here are therefore per optimiser step times processes.
        processes = self.accelerator.num_processes
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup * processes, args.max_steps * processes)
        self.model, self.optimizer, self.dataloader, self.scheduler = self.accelerator.prepare(
            model, optimizer, self.dataloader, scheduler
        )
        self.state = TrainingState()
        self.last_eval_metrics: dict[str, float] | None = None

    # -- checkpoints -------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Writes `checkpoints/step_N` atomically: a run killed while saving leaves the previous checkpoint intact."""
        root = self.output_dir / CHECKPOINTS_DIR
        final = root / f"step_{self.state.global_step}"
        partial = root / f"step_{self.state.global_step}.partial"
        if self.accelerator.is_main_process:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        # Every process writes its own RNG state into `partial`; renaming it before all have finished would lose
        # their files (or make their writes fail).
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(self.state.__dict__))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            for old in _checkpoint_dirs(self.output_dir)[: -self.args.checkpoints_total_limit]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        self.accelerator.load_state(str(path))
        self.state = TrainingState(**json.loads((path / STATE_FILE).read_text()))
        self.accelerator.print(f"Resumed from {path} at step {self.state.global_step}.")

    # -- logging -----------------------------------------------------------------------------------------------

    def _log(self, metrics: dict[str, float]) -> None:
        self.accelerator.log(metrics, step=self.state.global_step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"step": self.state.global_step, **metrics}) + "\n")

    def _truncate_history(self) -> None:
        """Drops history lines past the resumed step: a killed run may have logged steps that are now redone."""
        path = self.output_dir / HISTORY_FILE
        if not self.accelerator.is_main_process or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.state.global_step]
        path.write_text("".join(line + "\n" for line in kept))

    # -- the loop ----------------------------------------------------------------------------------------------

    def train(self) -> TrainingState:
        args, accelerator = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = resolve_checkpoint(self.output_dir, args.resume_from_checkpoint)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif accelerator.is_main_process and (self.output_dir / HISTORY_FILE).exists():
            (self.output_dir / HISTORY_FILE).unlink()
        self._truncate_history()
        accelerator.init_trackers("pemt", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

        steps_per_epoch = math.ceil(len(self.dataloader) / args.gradient_accumulation_steps)
        progress = tqdm(
            total=args.max_steps,
            initial=self.state.global_step,
            disable=args.no_progress_bar or not accelerator.is_local_main_process,
            desc="training",
        )
        sums: dict[str, float] = {}
        count, window_start, window_samples = 0, time.perf_counter(), 0
        epoch = self.state.global_step // steps_per_epoch
        while self.state.global_step < args.max_steps:
            self.dataloader.set_epoch(epoch)
            batches = self.dataloader
            skip = (self.state.global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
            if skip:
                batches = accelerator.skip_first_batches(self.dataloader, skip)
            self.model.train()
            for batch in batches:
                batch = self.prepare_batch(batch)
                with accelerator.accumulate(self.model):
                    output = self.model(**batch)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                clips = next(iter(batch.values())).shape[0] * accelerator.num_processes
                window_samples += clips
                for name in ("loss", *self.metric_names):
                    sums[name] = sums.get(name, 0.0) + float(output[name].detach())
                count += 1
                if not accelerator.sync_gradients:
                    continue
                self.state.global_step += 1
                self.state.samples_seen += clips * args.gradient_accumulation_steps
                progress.update(1)
                if self.state.global_step % args.logging_steps == 0 or self.state.global_step == args.max_steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {f"train/{k}": v / count for k, v in sums.items()}
                    metrics["train/clips_per_second"] = window_samples / max(elapsed, 1e-9)
                    metrics["train/learning_rate"] = self.scheduler.get_last_lr()[0]
                    self._log(metrics)
                    progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", clips_s=f"{metrics['train/clips_per_second']:.1f}")
                    sums, count, window_start, window_samples = {}, 0, time.perf_counter(), 0
                if self.evaluate and args.eval_steps and self.state.global_step % args.eval_steps == 0:
                    self._run_evaluation()
                if self.state.global_step % args.checkpointing_steps == 0:
                    self.save_checkpoint()
                if self.state.global_step >= args.max_steps:
                    break
            epoch += 1
        progress.close()
        if self.evaluate and not (args.eval_steps and self.state.global_step % args.eval_steps == 0):
            self._run_evaluation()
        self._average_buffers()
        self._write_run_summary()
        # Only the trackers end here: `end_training` would also tear down the process group, which callers still
        # need to synchronise while the main process saves the model.
        for tracker in accelerator.trackers:
            tracker.finish()
        return self.state

    @torch.no_grad()
    def _average_buffers(self) -> None:
        """Averages floating-point buffers (BatchNorm running statistics) over processes. Each process updates them
        from its own batches and DDP re-broadcasts rank 0's copy only at the next forward, so after the last step
        they differ; the average describes all the data and leaves every process, and the saved model, identical."""
        if self.accelerator.num_processes == 1:
            return
        for buffer in self.accelerator.unwrap_model(self.model).buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.accelerator.reduce(buffer, reduction="mean"))

    def _run_evaluation(self) -> dict[str, float]:
        # Evaluation draws its own random masks and swaps; forking keeps the training RNG stream, and so resumed
        # runs, independent of when evaluations happened.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed)
            metrics = self.evaluate(self.accelerator.unwrap_model(self.model), self.accelerator)
        self.model.train()
        self.last_eval_metrics = metrics
        self._log({f"eval/{k}": v for k, v in metrics.items()})
        self.accelerator.print("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _write_run_summary(self) -> None:
        """Each process records what it did, so multi-process runs can be checked for staying in step."""
        summary = {
            "process_index": self.accelerator.process_index,
            "num_processes": self.accelerator.num_processes,
            "global_step": self.state.global_step,
            "samples_seen": self.state.samples_seen,
            "weights_sha256": weights_digest(self.accelerator.unwrap_model(self.model)),
        }
        path = self.output_dir / f"run_summary_process{self.accelerator.process_index}.json"
        path.write_text(json.dumps(summary, indent=2))

    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)
