"""The visual CNN's forward pass per dtype and memory layout, as a fraction of the bf16 matmul peak measured in the
same run (the 3D ResNet is ~99% of PEMT's FLOPs, so this is the figure that decides every other).

Variants: float32 and bf16 autocast, each in the contiguous and the channels-last layout (`cnn_memory_format`), and
bf16 weights in channels-last (what `pipeline(..., dtype=torch.bfloat16)` runs). Eval mode, `torch.no_grad()`, at
the paper's segment size (32 frames at 112 x 112). Timings are interleaved (one call of each variant per round) and
the median of `--reps` rounds is reported, so that load from other processes falls on every variant alike.

    python benchmarks/bench_cnn.py [--segments 2] [--reps 5] [--threads 1] [--backward]

With `--backward` each call is a training step of the CNN alone (train mode, forward + backward of the sum of the
outputs; useful FLOPs counted as 3x the forward's).

Prints a Markdown table and writes benchmarks/results/bench_cnn.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import command_line, describe_hardware, hardware, matmul_peak_flops, print_table, write_results
from pemt import PemtConfig
from pemt.model.cnn_pemt import PemtVisualCNN

# (name, cnn_memory_format, autocast, weights dtype)
VARIANTS = [
    ("fp32, contiguous", "contiguous", False, torch.float32),
    ("fp32, channels-last", "channels_last", False, torch.float32),
    ("bf16 autocast, contiguous", "contiguous", True, torch.float32),
    ("bf16 autocast, channels-last", "channels_last", True, torch.float32),
    ("bf16 weights, channels-last", "channels_last", False, torch.bfloat16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backward", action="store_true", help="time forward + backward in train mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = PemtVisualCNN(PemtConfig(cnn_memory_format="contiguous")).eval()
    config = PemtConfig()
    pixels = torch.randn(args.segments, 3, config.frames_per_segment, config.train_crop_size, config.train_crop_size)
    runs = {}
    for name, memory_format, autocast, dtype in VARIANTS:
        cnn = PemtVisualCNN(PemtConfig(cnn_memory_format=memory_format)).train(args.backward)
        cnn.load_state_dict(reference.state_dict())
        cnn.to(dtype)
        context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
        runs[name] = (cnn, context, pixels.to(dtype))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(pixels)
    flops = counter.get_total_flops() * (3 if args.backward else 1)

    def call(cnn, x) -> None:
        if args.backward:
            cnn.zero_grad(set_to_none=True)
            cnn(x).float().sum().backward()
        else:
            with torch.no_grad():
                cnn(x)

    peaks = {name: matmul_peak_flops(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    times = {name: [] for name in runs}
    for cnn, context, x in runs.values():  # warm-up: kernel selection, weight reorders
        with context():
            call(cnn, x)
    for _ in range(args.reps):
        for name, (cnn, context, x) in runs.items():
            begin = time.perf_counter()
            with context():
                call(cnn, x)
            times[name].append(time.perf_counter() - begin)
    # The peak again after the timings: on a shared machine it moves, and the fraction should use what the run saw.
    peaks_after = {name: matmul_peak_flops(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peaks = {k: max(peaks[k], peaks_after[k]) for k in peaks}

    baseline = statistics.median(times[VARIANTS[0][0]])
    rows, results = [], []
    for name, runs_s in times.items():
        seconds = statistics.median(runs_s)
        rate = flops / seconds
        rows.append([name, f"{seconds:.3f}", f"{baseline / seconds:.2f}x", f"{rate / 1e9:.0f}",
                     f"{rate / peaks['bf16']:.0%}", f"{rate / peaks['fp32']:.0%}"])
        results.append({"variant": name, "median_s": seconds, "times_s": runs_s, "flops_per_s": rate,
                        "fraction_of_bf16_peak": rate / peaks["bf16"], "fraction_of_fp32_peak": rate / peaks["fp32"]})
    print(f"# {command_line()}")
    print(f"# {describe_hardware()}")
    print(f"# visual CNN {'forward + backward (train mode)' if args.backward else 'forward (eval)'}, {args.segments} segments of {config.frames_per_segment} x {config.train_crop_size}^2, "
          f"{flops / 1e9:.0f} useful GFLOP; matmul peak fp32 {peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
          f"(4096^2, same run); medians of {args.reps} interleaved rounds")
    print_table(["variant", "seconds", "speed-up", "GFLOP/s", "of bf16 peak", "of fp32 peak"], rows)
    write_results("bench_cnn_backward" if args.backward else "bench_cnn", {"backward": args.backward, "segments": args.segments, "reps": args.reps, "forward_flops": flops,
                                "matmul_peak_flops_per_s": peaks, "hardware": hardware(), "runs": results})


if __name__ == "__main__":
    main()
