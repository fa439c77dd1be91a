"""The training loop shared by pretraining and fine-tuning: a thin layer over Accelerate.

Accelerate does the parts it has: mixed precision, gradient accumulation, data-parallel processes, trackers,
checkpoint folders with their naming and rotation (`ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=...)`), and saving the training progress with the model, optimiser, scheduler, RNG states and data
order (`register_for_checkpointing`); `transformers.get_scheduler` gives the learning-rate schedule. What is left
here: the step loop with its checks (a NaN or infinite loss stops the run before anything is saved), exact resumption
from the position in the data, the JSONL history, and the rules of [`run_folder`] (a run owns its output folder; a
truncated checkpoint is skipped).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, send_to_device, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..errors import NonFiniteLossError
from ..model.compile_pemt import compile_pemt
from .arguments import PemtTrainingArguments
from .run_folder import (
    CHECKPOINT_MARKER,
    HISTORY_FILE,
    check_checkpoint_belongs,
    checkpoint_step,
    claim_output_dir,
    clear_run,
    complete_checkpoints,
    incomplete_entries,
    resume_candidates,
    write_run_file,
)


CPU_PROCESSES_HINT = (
    "accelerate launch was asked for {requested} processes but started one: without --multi_gpu, Accelerate's "
    "launcher runs a single process on a machine without GPUs (even with --cpu). To train with {requested} CPU "
    "processes: ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {requested} ..."
)


@dataclass
class TrainingState:
    """How far training got; saved in each checkpoint through `Accelerator.register_for_checkpointing`."""

    global_step: int = 0
    samples_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step, self.samples_seen = int(state["global_step"]), int(state["samples_seen"])


def build_accelerator(args: PemtTrainingArguments) -> Accelerator:
    """The Accelerator of a run; build it first, so that data preparation can run on the main process first."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to_list() or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir),
            logging_dir=str(output_dir / "logs"),
            automatic_checkpoint_naming=True,
            total_limit=args.checkpoints_total_limit,
        ),
        # A sampler seeded per epoch makes the data order a function of (seed, epoch): resuming can skip to the
        # exact batch a killed run had reached.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    requested = launcher_requested_processes()
    if requested and requested > accelerator.num_processes and accelerator.is_main_process:
        sys.stderr.write("pemt: warning: " + CPU_PROCESSES_HINT.format(requested=requested) + "\n")
    return accelerator


def launcher_requested_processes(parent_command: list[str] | None = None) -> int | None:
    """`--num_processes` of the `accelerate launch` command that started this process, if it did.

    Accelerate's single-process launcher starts the script as its child and passes the count on to no one, so the
    parent's command line is the only place it is written (read from /proc; None where there is none).
    """
    if parent_command is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        except OSError:
            return None
        parent_command = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    text = " ".join(parent_command)
    if not re.search(r"accelerate(\.commands\.launch|\s+launch|-launch)", text):
        return None
    match = re.search(r"--num_processes[=\s]+(\d+)", text)
    return int(match.group(1)) if match else None


def prepare_output_dir(accelerator: Accelerator, args: PemtTrainingArguments, fingerprint: dict) -> None:
    """Claims `args.output_dir` for this run (see [`run_folder.claim_output_dir`]) before any work is done."""
    output_dir = Path(args.output_dir)
    clear = claim_output_dir(output_dir, fingerprint, args.resume_from_checkpoint, args.overwrite_output_dir)
    if args.resume_from_checkpoint and not clear:
        # The settings are checked now, before data preparation; the model config when the model exists.
        for path in resume_candidates(output_dir, args.resume_from_checkpoint)[:1]:
            check_checkpoint_belongs(path, fingerprint, None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if clear:
            accelerator.print(f"--overwrite_output_dir: clearing the previous run's checkpoints and logs in {output_dir}.")
            clear_run(output_dir)
        write_run_file(output_dir, fingerprint, finished=False)
    accelerator.wait_for_everyone()


def finish_output_dir(accelerator: Accelerator, args: PemtTrainingArguments, fingerprint: dict) -> None:
    if accelerator.is_main_process:
        write_run_file(Path(args.output_dir), fingerprint, finished=True)


def shard_for_evaluation(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """`loader` split across processes (each evaluates its share; `gather_for_metrics` joins the results and drops
    the samples repeated to even out the last batch). Not registered with the Accelerator, so checkpoints hold only
    the training loader's state whether or not a run evaluates."""
    if accelerator.num_processes == 1:
        return loader
    return prepare_data_loader(
        loader, accelerator.device, num_processes=accelerator.num_processes, process_index=accelerator.process_index,
        put_on_device=True, even_batches=True,
    )


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters and buffers: equal digests mean bit-identical weights (used to check that
    data-parallel processes stay in step)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


NON_FINITE_HINT = (
    "With --mixed_precision bf16 on a CPU, oneDNN's bf16 3D-convolution backward gives NaN at small temporal sizes: "
    "train with --mixed_precision no. Otherwise lower --learning_rate or raise --warmup_steps."
)


class TrainingLoop:
    r"""
    Runs the optimiser steps of a run of `model` on `train_dataset` (named so as not to shadow `transformers.Trainer`,
    which it is not: the loop is Accelerate's, with pemt's resumption and checks).

    Args:
        accelerator (`accelerate.Accelerator`): from [`build_accelerator`].
        model (`torch.nn.Module`): returns an output with `loss`; `metric_names` name further scalar fields to log.
        args ([`PemtTrainingArguments`]): the training options.
        train_dataset (`torch.utils.data.Dataset`): items that `collate_fn` stacks into model inputs.
        collate_fn (`Callable`): list of items -> batch dict.
        fingerprint (`dict`): the run's settings (see [`run_folder.run_fingerprint`]), written into each checkpoint
            and compared on resumption.
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
        args: PemtTrainingArguments,
        train_dataset: Dataset,
        collate_fn: Callable,
        fingerprint: dict,
        metric_names: Iterable[str] = (),
        prepare_batch: Callable[[dict], dict] | None = None,
        parameter_groups: list[dict] | None = None,
        evaluate: Callable | None = None,
        drop_last: bool = True,
    ):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.fingerprint = fingerprint
        self.metric_names = tuple(metric_names)
        self.prepare_batch = prepare_batch or (lambda batch: batch)
        self.evaluate = evaluate
        self.accelerator = accelerator
        self.model_config = model.config.to_dict() if hasattr(model, "config") else {}
        set_seed(args.seed)
        # A stream (`--streaming`, pemt.data.streaming.StreamedBatches) batches, orders, splits between processes
        # and skips on resume itself; Accelerate's sampler and dispatching would do all of that again.
        self.streaming = isinstance(train_dataset, torch.utils.data.IterableDataset)
        dataloader = DataLoader(
            train_dataset,
            batch_size=None if self.streaming else args.per_device_train_batch_size,
            shuffle=not self.streaming,
            collate_fn=None if self.streaming else collate_fn,
            drop_last=False if self.streaming else drop_last,
            num_workers=0 if self.streaming else args.dataloader_num_workers,
            # Starting an epoch's iterator draws a base seed from this generator; without one it would come from
            # the global RNG, which a resumed run restores *before* its first (skipping) iterator starts while the
            # killed run had drawn it before the checkpoint, so every later mask, swap and crop would differ.
            generator=torch.Generator().manual_seed(args.seed),
        )
        if len(dataloader) == 0:
            raise ValueError(
                f"The training set ({len(train_dataset)} clips) gives no full batch of "
                f"{args.per_device_train_batch_size}; lower --per_device_train_batch_size."
            )
        groups = parameter_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        # Adam (L2 weight decay) is the authors' fine-tuning optimiser; AdamW stays the default.
        optimizer_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(groups, lr=args.learning_rate, weight_decay=args.weight_decay, eps=args.adam_epsilon)
        if args.torch_compile:
            # The parts only (see compile_pemt): in place, so the optimiser's parameters and the saved keys are the same.
            options = {"backend": args.torch_compile_backend, "mode": args.torch_compile_mode}
            compile_pemt(model, **{k: v for k, v in options.items() if v is not None})
        if self.streaming:
            self.model, self.optimizer = accelerator.prepare(model, optimizer)
            self.dataloader = dataloader
        else:
            self.model, self.optimizer, self.dataloader = accelerator.prepare(model, optimizer, dataloader)
        self.max_steps = args.total_steps(len(self.dataloader))
        # Post-LN Transformers diverge or stall without a warm-up at these learning rates; 10% is BERT's convention.
        warmup = args.warmup_steps if args.warmup_steps is not None else math.ceil(0.1 * self.max_steps)
        # Accelerate's scheduler wrapper steps the schedule once per process at each optimiser step; the totals
        # given here are therefore optimiser steps times processes.
        processes = accelerator.num_processes
        scheduler = get_scheduler(
            args.lr_scheduler_type, self.optimizer.optimizer, num_warmup_steps=warmup * processes,
            num_training_steps=self.max_steps * processes,
        )
        self.scheduler = accelerator.prepare(scheduler)
        self.state = TrainingState()
        accelerator.register_for_checkpointing(self.state)
        self.last_eval_metrics: dict[str, float] | None = None
        self.last_checkpoint: Path | None = None

    # -- checkpoints -------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Saves `checkpoints/checkpoint_<step>` through Accelerate (which also deletes the oldest beyond
        `--checkpoints_total_limit`), then marks it complete once every process has written its part."""
        accelerator = self.accelerator
        # Accelerate names the folder after its save counter; the step makes the name say where the run was.
        accelerator.project_configuration.iteration = self.state.global_step
        location = Path(accelerator.save_state())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            marker = {
                **self.state.state_dict(), "fingerprint": self.fingerprint, "model_config": self.model_config,
            }
            (location / CHECKPOINT_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
        accelerator.wait_for_everyone()
        self.last_checkpoint = location
        return location

    def resume(self) -> Path | None:
        """Loads the checkpoint `--resume_from_checkpoint` names; for "latest", the newest complete one, falling
        back to older ones when it cannot be read. Returns the checkpoint loaded, or None (start afresh)."""
        loaded = None
        for path in resume_candidates(self.output_dir, self.args.resume_from_checkpoint):
            check_checkpoint_belongs(path, self.fingerprint, self.model_config)
            try:
                self.accelerator.load_state(str(path))
            except Exception as err:  # noqa: BLE001 - any unreadable file; the next checkpoint overwrites all state
                if self.args.resume_from_checkpoint != "latest":
                    raise RuntimeError(f"Checkpoint {path} cannot be loaded: {err}") from err
                self.accelerator.print(f"WARNING: checkpoint {path} cannot be loaded ({err}); trying the previous one.")
                continue
            loaded = path
            break
        else:
            if self.args.resume_from_checkpoint == "latest" and complete_checkpoints(self.output_dir):
                raise RuntimeError(f"No checkpoint in {self.output_dir / 'checkpoints'} could be loaded; see the warnings.")
        if loaded is None:
            self.state.load_state_dict({"global_step": 0, "samples_seen": 0})
        else:
            self.accelerator.print(f"Resumed from {loaded} at step {self.state.global_step}.")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            # Cut-short saves, and checkpoints past the resumed step (the run is redone from there), would collide
            # with the names this run writes next.
            stale = incomplete_entries(self.output_dir) + [
                p for p in complete_checkpoints(self.output_dir) if checkpoint_step(p) > self.state.global_step
            ]
            for path in stale:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.accelerator.wait_for_everyone()
        return loaded

    # -- logging -----------------------------------------------------------------------------------------------

    def _log(self, metrics: dict[str, float]) -> None:
        self.accelerator.log(metrics, step=self.state.global_step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"step": self.state.global_step, **metrics}) + "\n")

    def _reset_history(self) -> None:
        """Keeps only history lines up to the resumed step: a killed run may have logged steps that are now redone."""
        path = self.output_dir / HISTORY_FILE
        if not self.accelerator.is_main_process or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.state.global_step]
        path.write_text("".join(line + "\n" for line in kept))

    # -- checks ------------------------------------------------------------------------------------------------

    def _stop_if_not_finite(self, loss: torch.Tensor | None, grad_norm: torch.Tensor | None = None) -> None:
        """Raises [`NonFiniteLossError`] on every process when any process's loss (or the gradient norm) is NaN or
        infinite; all processes must agree, or the others would wait forever at the next collective."""
        value = loss if loss is not None else grad_norm
        bad = (~torch.isfinite(value.detach().float())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return
        what = "loss" if loss is not None else "gradient norm"
        saved = f"the last checkpoint ({self.last_checkpoint}) is intact" if self.last_checkpoint else "no checkpoint was written"
        raise NonFiniteLossError(
            f"Training stopped at step {self.state.global_step + 1}: the {what} is {value.item()} "
            f"(on {int(bad.item())} of {self.accelerator.num_processes} processes). Nothing from this step on was "
            f"saved; {saved}. {NON_FINITE_HINT}"
        )

    # -- the loop ----------------------------------------------------------------------------------------------

    def train(self) -> TrainingState:
        args, accelerator = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        loaded = self.resume()
        if loaded is None and accelerator.is_main_process and (self.output_dir / HISTORY_FILE).exists():
            (self.output_dir / HISTORY_FILE).unlink()
        self._reset_history()
        if args.report_to_list():
            scalars = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("pemt", config=scalars)

        steps_per_epoch = math.ceil(len(self.dataloader) / args.gradient_accumulation_steps)
        progress = tqdm(
            total=self.max_steps,
            initial=self.state.global_step,
            disable=args.no_progress_bar or not accelerator.is_local_main_process,
            desc="training",
        )
        # fp16's gradient scaler expects occasional infinite gradients and skips those steps itself.
        check_gradients = accelerator.mixed_precision != "fp16"
        sums: dict[str, float] = {}
        count, window_start, window_samples = 0, time.perf_counter(), 0
        epoch = self.state.global_step // steps_per_epoch
        while self.state.global_step < self.max_steps:
            if not self.streaming:
                self.dataloader.set_epoch(epoch)
            # Data sets that seed each sample by (seed, epoch, index) need the epoch; Accelerate hands it to the
            # seedable sampler only, not to the data set as well.
            if hasattr(self.dataloader.dataset, "set_epoch"):
                self.dataloader.dataset.set_epoch(epoch)
            batches = self.dataloader
            skip = (self.state.global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
            if skip and self.streaming:
                self.dataloader.dataset.skip_batches(skip)  # the consumed rows are read, not decoded
            elif skip:
                batches = accelerator.skip_first_batches(self.dataloader, skip)
            if self.streaming:
                batches = (send_to_device(batch, accelerator.device) for batch in batches)
            self.model.train()
            for batch in batches:
                batch = self.prepare_batch(batch)
                with accelerator.accumulate(self.model):
                    output = self.model(**batch)
                    self._stop_if_not_finite(output.loss)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients:
                        # max_norm=inf measures the norm without clipping (the scale factor is clamped to 1).
                        norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm or math.inf)
                        if check_gradients and norm is not None:
                            self._stop_if_not_finite(None, norm)
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
                if self.state.global_step % args.logging_steps == 0 or self.state.global_step == self.max_steps:
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
                if self.state.global_step >= self.max_steps:
                    break
            epoch += 1
        progress.close()
        # Before the final evaluation, so that it scores the model that is saved.
        self._average_buffers()
        if self.evaluate and not (args.eval_steps and self.state.global_step % args.eval_steps == 0):
            self._run_evaluation()
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

    @torch.no_grad()
    def _buffers_from_main_process(self) -> None:
        """Gives every process the main process's buffers (BatchNorm statistics), so that the processes' shares of an
        evaluation are scored by one model. Training is unchanged: DDP broadcasts them the same way at the next
        forward pass."""
        if self.accelerator.num_processes == 1:
            return
        for buffer in self.accelerator.unwrap_model(self.model).buffers():
            torch.distributed.broadcast(buffer, src=0)

    def _run_evaluation(self) -> dict[str, float]:
        self._buffers_from_main_process()
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
