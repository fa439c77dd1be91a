"""Runs every benchmark in turn (what `make benchmark` does); each prints its table and writes its JSON to
benchmarks/results/. A new benchmark joins by adding a line to `BENCHMARKS`.

    python benchmarks/run_all.py [--only bench_transformers ...] [--summary_only]

At the end it prints one summary table (the key figure of each benchmark, read from benchmarks/results/) under a line
naming the hardware.

The paper-size fine-tuning step runs the key configurations only (full sharing + low rank in bf16, checkpointing off
and on, channels-last; and bf16 autocast against bf16 weights in the contiguous layout): on a 2-core CPU each takes
several minutes. All eight autocast/fp32 configurations run at a reduced size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS_DIR, describe_hardware, print_table

HERE = Path(__file__).resolve().parent

# (script, arguments): run in this order. One thread where timings are compared: on a shared machine, OpenMP threads
# that oversubscribe the cores made the same step swing by 3x or more.
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench_parameters", []),
    ("bench_avbert_equivalence", []),
    ("bench_processor", []),
    ("bench_transformers", ["--threads", "1"]),
    ("bench_cnn", ["--threads", "1"]),
    ("bench_cnn", ["--threads", "1", "--backward"]),
    ("bench_finetune_step", ["--clips", "1", "--segments", "2", "--chunk_size", "1", "--threads", "1"]),
    ("bench_finetune_step", ["--configs", "full-bf16-on", "full-bf16-off", "--threads", "1"]),
    ("bench_finetune_step", ["--configs", "full-bf16-on", "full-bf16w-on", "--threads", "1", "--memory_format", "contiguous"]),
    ("bench_compile", ["--threads", "1"]),
    ("bench_lowrank_matmuls", ["--threads", "1"]),
    ("bench_pipeline", ["--preset", "paper", "--seconds", "30", "--runs", "1", "--skip_parts", "--threads", "1", "--compile"]),
]


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary_rows() -> list[list[str]]:
    """One row per key figure, from the results files the benchmarks wrote (missing files are skipped)."""
    rows = []
    for name, what in (("bench_cnn", "forward"), ("bench_cnn_backward", "fwd + bwd")):
        if cnn := _load(name):
            for run in cnn["runs"]:
                rows.append([f"visual CNN {what}, {cnn['segments']} segments: {run['variant']}", f"{run['median_s']:.2f} s",
                             f"{run['fraction_of_bf16_peak']:.0%} of bf16 matmul peak", cnn["command"]])
    for path in sorted(RESULTS_DIR.glob("bench_finetune_step_*.json")):
        step = json.loads(path.read_text())
        for run in step["runs"]:
            rows.append([
                f"fine-tuning step {step['clips']}x{step['segments']}, {run['config']}, {step.get('memory_format', 'contiguous')}",
                f"{run['step_s']:.1f} s, {run['peak_memory_bytes'] / 2**30:.2f} GiB",
                f"{run['fraction_of_peak']:.0%} of {run['config'].split('-')[1]} matmul peak"
                + ("" if run.get("losses_finite", True) else ", NON-FINITE LOSS"),
                step["command"],
            ])
    if pipe := _load("bench_pipeline"):
        for run in pipe.get("variants", [])[1:]:  # the first is the baseline
            rows.append([f"pipeline, {pipe['seconds_of_video']:.0f}-s 720p clip, {pipe['preset']}: {run['variant']}",
                         f"{run['median_s']:.1f} s (first call {run['first_call_s']:.0f} s)",
                         f"{run['speedup']:.2f}x vs fp32, same top-1: {run['same_top1']}", pipe["command"]])
        if "decode_floor_bound" in pipe:
            rows.append([f"pipeline, {pipe['seconds_of_video']:.0f}-s 720p clip: decoding alone",
                         f"{pipe['parts_s']['decode floor (PyAV alone)']:.1f} s",
                         f"bounds a serial pipeline's speed-up at {pipe['decode_floor_bound']:.2f}x", pipe["command"]])
        if "speedup" in pipe:
            rows.append([f"pipeline, {pipe['seconds_of_video']:.0f}-s 720p clip, {pipe['preset']}: "
                         f"{pipe.get('fastest_variant', 'bf16')} vs fp32 serial",
                         f"{pipe['bf16_s']:.1f} s vs {pipe['fp32_s']:.1f} s",
                         f"{pipe['speedup']:.2f}x, same top-1: {pipe['same_top1']}, max prob. diff "
                         f"{pipe['max_probability_difference']:.1e}, max logit diff / logit std "
                         f"{pipe.get('relative_logit_error', float('nan')):.3f}", pipe["command"]])
    if transformers := _load("bench_transformers"):
        for run in transformers["runs"]:
            rows.append([f"Transformers fwd+bwd, {run['dtype']}: {run['variant']}", f"{run['median_s'] * 1e3:.0f} ms",
                         f"{run['speedup_vs_unshared']:.2f}x vs unshared", transformers["command"]])
    if compiled := _load("bench_compile"):
        for run in compiled["runs"]:
            rows.append([f"torch.compile, {run['part']}: {run['variant']}", f"{run['median_s']:.3f} s (first call {run['first_call_s']:.0f} s)",
                         f"{run['speedup_vs_eager']:.2f}x vs eager", compiled["command"]])
    if lowrank := _load("bench_lowrank_matmuls"):
        for dtype, profile in lowrank["profiles"].items():
            share = f", {profile['stack_s'] / lowrank['finetune_step_s']:.2%} of a 5x10 step" if lowrank.get("finetune_step_s") else ""
            rows.append([f"low-rank Transformer stack fwd+bwd, {dtype}: small matmuls", f"{profile['stack_s']:.3f} s",
                         f"{profile['matmul_share']:.0%} in {profile['matmul_calls']} matmuls{share}", lowrank["command"]])
    return rows


def print_summary() -> None:
    print(f"\n## Summary ({describe_hardware()})")
    print_table(["measurement", "time / memory", "figure", "command"], summary_rows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="run only these scripts (names without .py)")
    parser.add_argument("--summary_only", action="store_true", help="print the summary of the results already written")
    args = parser.parse_args()
    failed = []
    for script, arguments in [] if args.summary_only else BENCHMARKS:
        if args.only and script not in args.only:
            continue
        print(f"\n## {script} {' '.join(arguments)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{script}.py"), *arguments]).returncode != 0:
            failed.append(script)
    print_summary()
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
