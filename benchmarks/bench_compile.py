"""`torch.compile` (inductor) against eager, for the two parts `pemt.compile_pemt` can compile: the visual CNN and the
Transformer encoder. On a CPU inductor generates C++ for the elementwise work (BatchNorm, ReLU, residual sums, the
low-rank layers' normalisations) and calls oneDNN for the convolutions and matmuls; whether that pays is measured here.

Visual CNN forward (eval, `torch.no_grad()`, paper segment size, channels-last): bf16 autocast and bf16 weights, each
eager, compiled, and compiled with inductor's `freezing` (weights folded and pre-packed as constants: inference only,
later weight changes are not seen). With `--backward`, also the CNN's training step (train mode, forward + backward,
bf16 autocast). Transformer stack (`bench_transformers.py`'s step: the three shared low-rank Transformers, batch 5 x
10 segments, forward + backward, Sigma cached): fp32 and bf16 autocast, eager and with the encoder compiled.

Compilation time (the first call) is reported apart; timings are medians of `--reps` interleaved rounds.

    python benchmarks/bench_compile.py [--segments 2] [--reps 5] [--threads 1] [--backward] [--skip_cnn] [--skip_transformers]

Prints Markdown tables and writes benchmarks/results/bench_compile.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_transformers import build, make_step
from common import command_line, describe_hardware, hardware, matmul_peak_flops, print_table, write_results
from pemt import PemtConfig
from pemt.model.cnn_pemt import PemtVisualCNN


def first_call_seconds(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleaved(calls: dict[str, callable], reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            begin = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - begin)
    return times


def cnn_rows(args: argparse.Namespace, peak_bf16: float) -> tuple[list[list], list[dict]]:
    config = PemtConfig(cnn_memory_format="channels_last")
    torch.manual_seed(0)
    reference = PemtVisualCNN(config).eval()
    pixels = torch.randn(args.segments, 3, config.frames_per_segment, config.train_crop_size, config.train_crop_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(pixels)
    forward_flops = counter.get_total_flops()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    variants = {}  # name -> (callable, flops)
    for weights in ("bf16 autocast", "bf16 weights"):
        for compiled in ("eager", "compiled", "compiled, freezing"):
            cnn = PemtVisualCNN(config).eval()
            cnn.load_state_dict(reference.state_dict())
            x = pixels
            if weights == "bf16 weights":
                cnn, x = cnn.to(torch.bfloat16), pixels.to(torch.bfloat16)
            if compiled != "eager":
                cnn.compile(options={"freezing": True} if "freezing" in compiled else None)
            context = autocast if weights == "bf16 autocast" else contextlib.nullcontext

            def call(cnn=cnn, x=x, context=context):
                with torch.no_grad(), context():
                    cnn(x)

            variants[f"forward, {weights}, {compiled}"] = (call, forward_flops)
    if args.backward:
        for compiled in ("eager", "compiled"):
            cnn = PemtVisualCNN(config).train()
            cnn.load_state_dict(reference.state_dict())
            if compiled != "eager":
                cnn.compile()

            def step(cnn=cnn):
                cnn.zero_grad(set_to_none=True)
                with autocast():
                    out = cnn(pixels)
                out.float().sum().backward()

            variants[f"fwd + bwd (train), bf16 autocast, {compiled}"] = (step, 3 * forward_flops)
    first = {name: first_call_seconds(fn) for name, (fn, _) in variants.items()}
    times = interleaved({name: fn for name, (fn, _) in variants.items()}, args.reps)
    rows, results = [], []
    baselines = {}
    for name, runs in times.items():
        seconds = statistics.median(runs)
        kind = name.rsplit(", ", 1)[0] if not name.endswith("freezing") else name.rsplit(", ", 2)[0]
        baselines.setdefault(kind, seconds)  # the eager variant of each kind comes first
        rate = variants[name][1] / seconds
        rows.append([f"visual CNN {name}", f"{seconds:.3f}", f"{baselines[kind] / seconds:.2f}x", f"{first[name]:.1f}",
                     f"{rate / peak_bf16:.0%}"])
        results.append({"part": "visual_cnn", "variant": name, "median_s": seconds, "times_s": runs,
                        "first_call_s": first[name], "speedup_vs_eager": baselines[kind] / seconds,
                        "fraction_of_bf16_peak": rate / peak_bf16})
    return rows, results


def transformer_rows(args: argparse.Namespace) -> tuple[list[list], list[dict]]:
    hidden = PemtConfig().hidden_size
    variants = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16 autocast", torch.bfloat16)):
        for compiled in ("eager", "compiled"):
            encoder = build(True, True, 128)
            if compiled == "compiled":
                encoder.compile()
            variants[f"{dtype_name}, {compiled}"] = make_step(encoder, hidden, 5, 10, True, dtype)
    first = {name: first_call_seconds(fn) for name, fn in variants.items()}
    for fn in variants.values():  # a second warm-up call: the backward's first compile may come late
        fn()
    times = interleaved(variants, args.reps)
    rows, results, baselines = [], [], {}
    for name, runs in times.items():
        seconds = statistics.median(runs)
        kind = name.rsplit(", ", 1)[0]
        baselines.setdefault(kind, seconds)
        rows.append([f"Transformer stack fwd + bwd, {name}", f"{seconds:.3f}", f"{baselines[kind] / seconds:.2f}x",
                     f"{first[name]:.1f}", ""])
        results.append({"part": "encoder", "variant": name, "median_s": seconds, "times_s": runs,
                        "first_call_s": first[name], "speedup_vs_eager": baselines[kind] / seconds})
    return rows, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backward", action="store_true", help="also the visual CNN's training step")
    parser.add_argument("--skip_cnn", action="store_true")
    parser.add_argument("--skip_transformers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak_bf16 = matmul_peak_flops(torch.bfloat16)
    rows, results = [], []
    if not args.skip_cnn:
        more_rows, more_results = cnn_rows(args, peak_bf16)
        rows += more_rows
        results += more_results
    if not args.skip_transformers:
        more_rows, more_results = transformer_rows(args)
        rows += more_rows
        results += more_results
    peak_bf16 = max(peak_bf16, matmul_peak_flops(torch.bfloat16))
    print(f"# {command_line()}")
    print(f"# {describe_hardware()}")
    print(f"# visual CNN: {args.segments} segments of 32 x 112^2, channels-last; bf16 matmul peak {peak_bf16 / 1e9:.0f} "
          f"GFLOP/s; medians of {args.reps} interleaved rounds; first call = compilation + one run")
    print_table(["measurement", "seconds", "speed-up vs eager", "first call s", "of bf16 peak"], rows)
    write_results("bench_compile", {"segments": args.segments, "reps": args.reps, "bf16_matmul_peak_flops_per_s": peak_bf16,
                                    "hardware": hardware(), "runs": results})


if __name__ == "__main__":
    main()
