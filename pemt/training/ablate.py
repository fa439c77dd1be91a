"""The paper's ablations as one command: `pemt ablate --suite {sharing,negatives,pretraining,objectives,all}`.

Each variant is pretrained (unless it is the from-scratch baseline) and evaluated with the same data, steps and seeds,
by calling `pemt pretrain` and `pemt finetune` with command-line arguments, so the same command runs at paper size
under `accelerate launch -m pemt.training.ablate ...`. Per variant and seed it records the Transformer parameter count,
held-out CPP and MEP accuracy (one fixed sampler for every variant, see `pretrain.evaluate_pretraining`), linear-probe
top-1 and fine-tuned top-1; `DIR/results.json` and `DIR/results.md` give mean ± sd over seeds.

Data: `--data_dir` in the layout `pemt make-demo-data DIR --task relation` writes (`pretrain/{train,test}/...` for
pretraining, `labelled/{train,test}/<class>/...` for the probes); made there when missing. Runs already finished in
`DIR/runs` are reused, so a killed ablation resumes, and variants shared by several suites run once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from ..cli import ArgumentParser, _positive
from ..model.configuration_pemt import PemtConfig
from . import finetune, pretrain
from .arguments import ModelArguments, load_model_config


@dataclass(frozen=True)
class Variant:
    """One row of a table: `overrides` are `--config_overrides` for pretraining (and for the from-scratch model)."""

    name: str
    overrides: str = ""
    pretrained: bool = True


PAPER = Variant("paper's choice (all shared, low-rank, similar negatives, MEP + CPP)")

SUITES: dict[str, list[Variant]] = {
    # The paper's parameter table: what each way of sharing costs in parameters and in accuracy.
    # Where modalities share a Transformer, each variant runs in both LayerNorm layouts: shared across modalities
    # (the authors' code, the default) and private per modality (SPEC.md's first description).
    "sharing": [
        Variant("no sharing", "share_layers=false,share_modalities=false,low_rank_dim=0"),
        Variant("across layers", "share_layers=true,share_modalities=false,low_rank_dim=0"),
        Variant("across modalities", "share_layers=false,share_modalities=true,low_rank_dim=0"),
        Variant(
            "across modalities, private LayerNorms",
            "share_layers=false,share_modalities=true,low_rank_dim=0,share_layer_norms=false",
        ),
        Variant("across modalities, low-rank", "share_layers=false,share_modalities=true"),
        Variant(
            "across modalities, low-rank, private LayerNorms",
            "share_layers=false,share_modalities=true,share_layer_norms=false",
        ),
        Variant("across layers and modalities", "share_layers=true,share_modalities=true,low_rank_dim=0"),
        Variant(
            "across layers and modalities, private LayerNorms",
            "share_layers=true,share_modalities=true,low_rank_dim=0,share_layer_norms=false",
        ),
        PAPER,
        Variant("paper's choice, private LayerNorms", "share_layer_norms=false"),
    ],
    "negatives": [
        Variant("uniform over the batch", "negative_sampling=uniform"),
        Variant("current sequence", "negative_sampling=sequence"),
        PAPER,
        Variant("content-aware, dissimilar first", "negative_sampling=dissimilar"),
    ],
    "pretraining": [Variant("from scratch", pretrained=False), PAPER],
    "objectives": [
        Variant("MEP only", "cpp_weight=0"),
        Variant("CPP only", "visual_mep_weight=0,audio_mep_weight=0,multimodal_mep_weight=0"),
        PAPER,
    ],
}
METRICS = (
    "transformer_parameters", "cpp_accuracy", "mep_accuracy", "pair_head_top1", "linear_probe_top1", "finetuned_top1"
)
HEADERS = (
    "Transformer params", "CPP acc.", "MEP acc.", "CPP head on labelled test, top-1", "linear probe top-1",
    "fine-tuned top-1",
)


@dataclass
class Settings:
    """The budget every variant gets (the defaults are the demo scale: minutes per run on a CPU)."""

    preset: str = "ablation"
    pretraining_steps: int = 250
    pretraining_batch_size: int = 32
    finetuning_steps: int = 60
    finetuning_batch_size: int = 8
    extra_pretraining_args: list[str] = field(default_factory=list)
    extra_finetuning_args: list[str] = field(default_factory=list)
    data_mode: str = "in_memory"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="pemt ablate", description="Run one of the paper's ablations (or all).")
    parser.add_argument("--suite", choices=(*SUITES, "all"), required=True)
    parser.add_argument("--output_dir", required=True, help="Where runs/, results.json and results.md go.")
    parser.add_argument("--data_dir", default=None, help="Relation-task data (default: OUTPUT_DIR/data, made if missing).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per variant (0 .. N-1).")
    parser.add_argument(
        "--first_seed", type=int, default=0,
        help="Run only seeds FIRST .. N-1 (to split seeds over machines or processes sharing OUTPUT_DIR; a last run "
        "without it reads every finished seed back and writes the whole table).",
    )
    parser.add_argument(
        "--variants", default=None,
        help="Run only these variants of the suite: comma-separated folder names under OUTPUT_DIR/runs (e.g. "
        "'paper,scratch'); the others are left out of this invocation's table.",
    )
    parser.add_argument(
        "--preset", default=Settings.preset,
        help="Model preset or config path every variant starts from (default: `ablation`, sized for a CPU).",
    )
    parser.add_argument(
        "--data_mode", choices=("in_memory", "on_the_fly"), default=Settings.data_mode,
        help="in_memory (default): decode the demo-size data once, shared by every run; on_the_fly: decode every "
        "sample with fresh segment placement and crops (what data at paper scale needs).",
    )
    parser.add_argument("--pretraining_steps", type=int, default=Settings.pretraining_steps)
    parser.add_argument("--pretraining_batch_size", type=int, default=Settings.pretraining_batch_size)
    parser.add_argument("--finetuning_steps", type=int, default=Settings.finetuning_steps)
    parser.add_argument("--finetuning_batch_size", type=int, default=Settings.finetuning_batch_size)
    parser.add_argument(
        "--jobs", type=_positive, default=1,
        help="Independent runs (variant x seed) trained at once, each in its own process with an equal share of the "
        "CPU cores as torch threads. On a CPU set it to the number of cores: runs at demo scale are too small to use "
        "several threads well. Must be 1 under a multi-process `accelerate launch`, which parallelises each run.",
    )
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--cache_dir", default=None, help="Preprocessing cache (default: OUTPUT_DIR/cache).")
    return parser


def transformer_parameters(config: PemtConfig) -> int:
    """Parameters of the visual, audio and multimodal Transformers (the paper's "Transformers" column)."""
    from ..model.modeling_pemt import PemtModel

    return sum(p.numel() for p in PemtModel(config).encoder.parameters())


def run_variant(variant: Variant, seed: int, data: Path, run_dir: Path, cache: Path, settings: Settings) -> dict:
    """Pretrains (unless from scratch), then linear-probes and fine-tunes; returns this seed's row. A finished run's
    `result.json` is read back instead of training again."""
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.perf_counter()
    common = [
        "--seed", str(seed), "--cache_dir", str(cache), "--no_progress_bar", "--checkpointing_steps", "100000",
        "--data_mode", settings.data_mode,
        # A run without result.json was killed part-way: it starts again from the beginning (its folders hold no
        # checkpoint worth resuming at demo scale, and a half-written run must not be mistaken for a finished one).
        "--overwrite_output_dir",
    ]
    config_args = ["--model_config", settings.preset, *(["--config_overrides", variant.overrides] if variant.overrides else [])]
    result = {
        "transformer_parameters": transformer_parameters(
            load_model_config(ModelArguments(model_config=settings.preset, config_overrides=variant.overrides or None))
        )
    }
    if variant.pretrained:
        metrics = pretrain.main(
            [
                "--output_dir", str(run_dir / "pretrained"), "--train_dir", str(data / "pretrain"),
                "--max_steps", str(settings.pretraining_steps),
                "--per_device_train_batch_size", str(settings.pretraining_batch_size),
                "--logging_steps", "25", *config_args, *common, *settings.extra_pretraining_args,
            ]
        ) or {}
        result["cpp_accuracy"] = metrics.get("cpp_accuracy", math.nan)
        result["mep_accuracy"] = metrics.get("mep_accuracy", math.nan)
        result["pair_head_top1"] = pair_head_accuracy(run_dir / "pretrained", data / "labelled" / "test")
        start = ["--model_name_or_path", str(run_dir / "pretrained")]
    else:
        result["cpp_accuracy"] = result["mep_accuracy"] = result["pair_head_top1"] = math.nan
        start = config_args
    for key, extra in (("linear_probe_top1", ["--linear_probe"]), ("finetuned_top1", [])):
        metrics = finetune.main(
            [
                "--output_dir", str(run_dir / key), "--train_dir", str(data / "labelled"),
                "--max_steps", str(settings.finetuning_steps),
                "--per_device_train_batch_size", str(settings.finetuning_batch_size),
                "--logging_steps", "20", *start, *extra, *common, *settings.extra_finetuning_args,
            ]
        ) or {}
        result[key] = metrics.get("top1_accuracy", math.nan)
    result["seconds"] = time.perf_counter() - started
    if PartialState().is_main_process:
        done.write_text(json.dumps(result, indent=2) + "\n")
        # The models are not needed for the table; dropping them keeps a full run's folder small.
        for sub in ("pretrained", "linear_probe_top1", "finetuned_top1"):
            for weights in (run_dir / sub).glob("*.safetensors"):
                weights.unlink()
    return result


@dataclass(frozen=True)
class RunTask:
    """The arguments of one `run_variant` call, picklable so that a worker process can run it."""

    variant: Variant
    seed: int
    data: Path
    run_dir: Path
    cache: Path
    settings: Settings

    def run(self) -> dict:
        return run_variant(self.variant, self.seed, self.data, self.run_dir, self.cache, self.settings)

    def finished(self) -> bool:
        return (self.run_dir / "result.json").exists()


def _run_task_in_worker(task: RunTask, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return task.run()


def run_tasks(tasks: list[RunTask], jobs: int) -> list[dict]:
    """Runs every task and returns their rows in order: in this process when `jobs` is 1, else in `jobs` fresh worker
    processes (one per run, so no state of a finished run leaks into the next)."""
    if jobs == 1:
        with keep_process_group():
            return [task.run() for task in tasks]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Finished runs are read back here; only the others get a worker process.
    rows = [task.run() if task.finished() else None for task in tasks]
    pending = [i for i, row in enumerate(rows) if row is None]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
        # The first pending run that pretrains fills the preprocessing caches of both data sets alone, so that
        # parallel runs only ever read them.
        first = next((i for i in pending if tasks[i].variant.pretrained), None)
        if first is not None:
            rows[first] = pool.submit(_run_task_in_worker, tasks[first], threads).result()
            pending.remove(first)
        futures = {pool.submit(_run_task_in_worker, tasks[i], threads): i for i in pending}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            rows[i] = future.result()
            print(f"[ablate] {done}/{len(futures)} {tasks[i].run_dir}: {rows[i].get('seconds', 0.0):.0f} s", flush=True)
    return rows


def pair_head_accuracy(model_dir: Path, test_dir: Path) -> float:
    """The pretrained correct-pair-prediction head used, without any label, as the relation task's classifier: the
    fraction of held-out labelled clips it gets right when "matched" means a correspondence probability above 0.5.
    It shows whether pretraining learned the relation the labels name, apart from whether a downstream head can use
    it. NaN for a model without a CPP head (`cpp_weight=0`), and on all but the main process."""
    from transformers import pipeline

    if not PartialState().is_main_process or PemtConfig.from_pretrained(model_dir).cpp_weight == 0:
        return math.nan
    judge = pipeline("audio-visual-correspondence", model=str(model_dir))
    hits = []
    for relation, matched in (("matched", True), ("unrelated", False)):
        for clip in sorted((test_dir / relation).glob("*.mp4")):
            hits.append((judge(str(clip))["score"] > 0.5) == matched)
    return sum(hits) / len(hits) if hits else math.nan


@contextlib.contextmanager
def keep_process_group():
    """`pretrain.main` and `finetune.main` end with `accelerator.end_training()`, which destroys the process group of a
    multi-process (`accelerate launch`) run; the ablation calls them many times in one process, so the group must
    outlive each call. `main` destroys it once at the end instead."""
    original = PartialState.destroy_process_group
    PartialState.destroy_process_group = lambda self, group=None: None
    try:
        yield
    finally:
        PartialState.destroy_process_group = original


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds of each metric (NaN where the variant does not measure it)."""
    summary = {}
    for metric in METRICS:
        values = [row[metric] for row in rows if not math.isnan(row[metric])]
        mean = sum(values) / len(values) if values else math.nan
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
        summary[metric] = {"mean": mean, "sd": sd, "n": len(values)}
    return summary


def format_cell(metric: str, stats: dict[str, float]) -> str:
    if stats["n"] == 0:
        return "n/a"
    if metric == "transformer_parameters":
        return f"{stats['mean'] / 1e3:.1f}k"
    sd = "" if math.isnan(stats["sd"]) else f" ± {stats['sd']:.3f}"
    return f"{stats['mean']:.3f}{sd}"


def markdown(results: dict) -> str:
    lines = [
        f"# pemt ablate: {', '.join(results['suites'])}",
        "",
        f"Command: `{results['command']}`  ",
        f"Seeds: {results['seeds']}; mean ± sd over seeds. Wall time of this invocation: {results['seconds'] / 60:.1f} "
        f"min; of all its runs, summed (runs can share OUTPUT_DIR from several processes): "
        f"{results['run_seconds'] / 60:.1f} min.  ",
        "CPP / MEP accuracy: held-out pretraining clips, one fixed sampler for all variants (uniform negatives, "
        f"chance {results['mep_chance']:.3f}; CPP chance 0.5). Top-1: held-out labelled clips "
        f"(chance {results['top1_chance']:.3f}).",
        "",
    ]
    for suite in results["suites"]:
        lines += [f"## {suite}", "", "| variant | " + " | ".join(HEADERS) + " |", "|---|" + "---|" * len(HEADERS)]
        for name, summary in results["tables"][suite].items():
            lines.append(f"| {name} | " + " | ".join(format_cell(m, summary[m]) for m in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def run_key(variant: Variant) -> str:
    """Folder name of a variant: its overrides (shared by every suite that runs it), or 'scratch'."""
    if not variant.pretrained:
        return "scratch" + ("_" + variant.overrides if variant.overrides else "")
    return variant.overrides.replace("=", "-").replace(",", "_") or "paper"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data_dir) if args.data_dir else out / "data"
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    # The first PartialState fixes the process group for every run that follows. Accelerator() would read
    # ACCELERATE_USE_CPU itself; a bare PartialState() does not, and would make each process of a multi-process CPU
    # launch think it is alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if args.jobs > 1 and state.num_processes > 1:
        raise ValueError(f"--jobs {args.jobs} needs a single process; this is a {state.num_processes}-process launch")
    if not (data / "pretrain").is_dir() or not (data / "labelled").is_dir():
        if args.data_dir:
            raise FileNotFoundError(
                f"--data_dir {data} lacks pretrain/ or labelled/; make it with `pemt make-demo-data {data} --task relation`."
            )
        if state.is_main_process:
            from ..data.demo import make_relation_data

            make_relation_data(data, workers=2)
        state.wait_for_everyone()
    settings = Settings(
        preset=args.preset,
        pretraining_steps=args.pretraining_steps,
        pretraining_batch_size=args.pretraining_batch_size,
        finetuning_steps=args.finetuning_steps,
        finetuning_batch_size=args.finetuning_batch_size,
        data_mode=args.data_mode,
        extra_pretraining_args=["--mixed_precision", args.mixed_precision],
        extra_finetuning_args=["--mixed_precision", args.mixed_precision],
    )
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    chosen = {
        suite: [v for v in SUITES[suite] if not args.variants or run_key(v) in args.variants.split(",")]
        for suite in suites
    }
    # Every (variant, seed) once, even when several suites share the variant.
    variants = {run_key(v): v for suite in suites for v in chosen[suite]}
    tasks = [
        RunTask(variant, seed, data, out / "runs" / key / f"seed_{seed}", cache, settings)
        for key, variant in variants.items()
        for seed in range(args.first_seed, args.seeds)
    ]
    finished = run_tasks(tasks, args.jobs)
    rows: dict[str, list[dict]] = {key: [] for key in variants}
    for task, row in zip(tasks, finished):
        rows[run_key(task.variant)].append(row)
    tables = {suite: {v.name: summarise(rows[run_key(v)]) for v in chosen[suite]} for suite in suites}
    config = load_model_config(ModelArguments(model_config=args.preset))
    num_classes = sum(1 for p in (data / "labelled" / "train").iterdir() if p.is_dir())
    results = {
        "command": "pemt ablate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "suites": suites,
        "seeds": args.seeds,
        "settings": settings.__dict__,
        "mep_chance": 1.0 / (config.mep_num_negatives + 1),
        "top1_chance": 1.0 / num_classes,
        "seconds": time.perf_counter() - started,
        "run_seconds": sum(row.get("seconds", 0.0) for runs in rows.values() for row in runs),
        "jobs": args.jobs,
        "tables": tables,
        "runs": {key: value for key, value in rows.items()},
    }
    if state.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(markdown(results))
        print(markdown(results))
    state.wait_for_everyone()
    state.destroy_process_group()
    return results


if __name__ == "__main__":
    from ..cli import module_main

    module_main("ablate")
