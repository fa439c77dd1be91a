"""One fine-tuning step of `PemtForAudioVisualClassification` (forward + backward + AdamW step): time, peak memory
and useful FLOP/s as a fraction of the machine's large-matmul peak.

Paper size by default: 5 clips x 10 segments, 32 frames at 112 x 112, 80 x 128 log-mel, 32 classes. Configurations
are named `<sharing>-<dtype>-<checkpointing>`: sharing `none` (three unshared full-rank Transformers) or `full`
(layer + cross-modal sharing, rank 128); dtype `fp32`, `bf16` (autocast, as `--mixed_precision bf16` trains) or
`bf16w` (the model's weights in bf16, no autocast: no per-call weight casts, the upper bound of bf16 on this
hardware; `pemt finetune` does not train so, since AdamW updates below bf16's resolution would be lost);
checkpointing `off` or `on` (CNNs over `--chunk_size` segments at a time with activation checkpointing per chunk, and
Transformer gradient checkpointing).

Each configuration runs in a fresh subprocess, so its peak memory is its own: peak RSS (`ru_maxrss`) on a CPU,
`torch.cuda.max_memory_allocated` on a GPU. Useful FLOPs are 3x the forward FLOPs that `FlopCounterMode` counts
(recomputation is not useful work); the peak is a 4096 x 4096 matmul in the same dtype, timed in the same process.
A paper-size step takes about a minute on a 2-core CPU: `--clips`, `--segments` and `--configs` give a reduced run.

    python benchmarks/bench_finetune_step.py [--clips 5] [--segments 10] [--steps 1] [--chunk_size 5]
        [--configs full-bf16-on full-bf16-off ...] [--threads N] [--memory_format channels_last|contiguous]

Prints a Markdown table and writes benchmarks/results/bench_finetune_step_<clips>x<segments>_<memory_format>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import command_line, describe_hardware, hardware, matmul_peak_flops, print_table, write_results
from pemt import PemtConfig, PemtForAudioVisualClassification

SHARING = {
    "none": {"share_layers": False, "share_modalities": False, "low_rank_dim": 0},
    "full": {"share_layers": True, "share_modalities": True, "low_rank_dim": 128},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16w": torch.bfloat16}
ALL_CONFIGS = [f"{s}-{d}-{c}" for s in SHARING for d in DTYPES for c in ("off", "on")]
DEFAULT_CONFIGS = [name for name in ALL_CONFIGS if "-bf16w-" not in name]
NUM_LABELS = 32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_worker(name: str, args: argparse.Namespace) -> dict:
    """Builds the configuration `name`, runs warm-up and timed steps, and returns its measurements."""
    sharing, dtype_name, checkpointing = name.split("-")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on = checkpointing == "on"
    config = PemtConfig(
        **SHARING[sharing], num_labels=NUM_LABELS, num_segments=args.segments,
        cnn_chunk_size=args.chunk_size if on else 0, cnn_checkpointing=on, cnn_memory_format=args.memory_format,
    )
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(config).to(device).train()
    if dtype_name == "bf16w":
        model.to(torch.bfloat16)
    if on:
        model.gradient_checkpointing_enable()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c = config
    pixels = torch.randn(args.clips * args.segments, 3, c.frames_per_segment, c.train_crop_size, c.train_crop_size, device=device)
    pixels = pixels.view(args.clips, args.segments, *pixels.shape[1:])  # the CNN converts its input to its layout
    inputs = {
        "pixel_values": pixels,
        "audio_values": torch.randn(args.clips, args.segments, 1, c.num_mel_bins, c.audio_frames, device=device),
        "labels": torch.randint(NUM_LABELS, (args.clips,), device=device),
    }
    if dtype_name == "bf16w":
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16")

    losses = []

    def step(counter: FlopCounterMode | None = None) -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast, counter or contextlib.nullcontext():
            loss = model(**inputs).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())

    counter = FlopCounterMode(display=False)
    step(counter)  # warm-up, counting the forward's FLOPs on the way
    times = []
    for _ in range(args.steps):
        synchronize(device)
        begin = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - begin)
    peak_memory = peak_memory_bytes(device)
    seconds = statistics.median(times)
    useful = 3 * counter.get_total_flops()
    peak = matmul_peak_flops(DTYPES[dtype_name], device)
    return {
        "config": name, "device": device.type, "losses_finite": all(map(math.isfinite, losses)), "step_s": seconds, "times_s": times, "peak_memory_bytes": peak_memory,
        "forward_flops": counter.get_total_flops(), "useful_flops_per_s": useful / seconds,
        "matmul_peak_flops_per_s": peak, "fraction_of_peak": useful / seconds / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up step (median)")
    parser.add_argument("--chunk_size", type=int, default=5, help="segments per CNN chunk when checkpointing is on")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=ALL_CONFIGS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory_format", default="channels_last", choices=["channels_last", "contiguous"],
                        help="config.cnn_memory_format of the CNNs")
    parser.add_argument("--worker", choices=ALL_CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return

    runs, rows = [], []
    for name in args.configs:
        # A fresh process per configuration: peak RSS only ever grows, so one process would report the largest.
        worker = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        output = subprocess.run(worker, check=True, capture_output=True, text=True).stdout
        run = json.loads(output.strip().splitlines()[-1])
        runs.append(run)
        rows.append([
            name, f"{run['step_s']:.1f}", f"{run['peak_memory_bytes'] / 2**30:.2f}",
            f"{run['forward_flops'] / 1e12:.2f}", f"{run['useful_flops_per_s'] / 1e9:.0f}",
            f"{run['matmul_peak_flops_per_s'] / 1e9:.0f}", f"{run['fraction_of_peak']:.0%}",
        ])
        print(f"{name}: {run['step_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"# {command_line()}")
    print(f"# {describe_hardware()}")
    print(f"# {args.clips} clips x {args.segments} segments, chunk size {args.chunk_size} when checkpointing, "
          f"{args.threads} threads, {runs[0]['device']}; one warm-up step, median of {args.steps} timed")
    print_table(
        ["config", "step s", "peak memory GiB", "forward TFLOP", "useful GFLOP/s", "matmul peak GFLOP/s", "of peak"],
        rows,
    )
    write_results(f"bench_finetune_step_{args.clips}x{args.segments}_{args.memory_format}", {"clips": args.clips, "segments": args.segments, "steps": args.steps,
                                          "chunk_size": args.chunk_size, "memory_format": args.memory_format, "hardware": hardware(), "runs": runs})


if __name__ == "__main__":
    main()
