"""Forward + backward time of the Transformer stack alone (`PemtEncoder`), shared + low-rank against unshared.

One step runs the visual, audio and multimodal Transformers over paper-length sequences (batch 5 clips, T = 10
segments: 11 tokens per modality, 22 multimodal) at paper width, as `PemtModel` does, then backpropagates the sum of
the outputs. Variants: no sharing (three 6-layer full-rank Transformers), and layer + cross-modal sharing with
rank-128 factors, with the orthogonal Sigma_g cached once per step (`parametrize.cached()`, what `PemtModel` does
without layer checkpointing) or recomputed at every use (what happens under layer checkpointing). The issue's goal is
shared + low-rank at least 2.2x faster than unshared. `--profile` prints the top operators of the shared step.

    python benchmarks/bench_transformers.py [--reps 9] [--batch 5] [--segments 10] [--dtypes fp32 bf16] [--threads N] [--profile]

Prints a Markdown table of medians and writes benchmarks/results/bench_transformers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.utils import parametrize

from common import command_line, print_table, write_results
from pemt import PemtConfig
from pemt.model.modeling_pemt import PemtLayer
from pemt.model.sharing import AUDIO, MULTIMODAL, VISUAL, PemtEncoder

# (name, share_layers, share_modalities, low_rank_dim, cache Sigma)
VARIANTS = [
    ("no sharing", False, False, 0, False),
    ("layer + cross-modal + low-rank, Sigma cached", True, True, 128, True),
    ("layer + cross-modal + low-rank, Sigma recomputed", True, True, 128, False),
]


def make_step(encoder: PemtEncoder, hidden: int, batch: int, segments: int, cache_sigma: bool, dtype: torch.dtype):
    """A closure running the three Transformers forward and backward once on fixed random inputs."""
    length = 1 + segments
    inputs = {m: torch.randn(batch, length * (2 if m == MULTIMODAL else 1), hidden) for m in (VISUAL, AUDIO, MULTIMODAL)}
    masks = {m: torch.ones(batch, 1, 1, x.shape[1], dtype=torch.bool) for m, x in inputs.items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        with autocast, parametrize.cached() if cache_sigma else contextlib.nullcontext():
            total = sum(encoder(inputs[m], masks[m], m)[0].float().sum() for m in inputs)
        total.backward()

    return step


def interleaved_times(steps: dict[str, callable], reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Times each step `reps` times in rotation, so that load from other processes falls on all variants alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - begin)
    return times


def build(share_layers: bool, share_modalities: bool, low_rank_dim: int) -> PemtEncoder:
    config = PemtConfig(share_layers=share_layers, share_modalities=share_modalities, low_rank_dim=low_rank_dim)
    config._attn_implementation = "sdpa"  # what PemtModel selects by default
    torch.manual_seed(0)
    return PemtEncoder(config, PemtLayer).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="print the top operators of the cached shared step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    rows, results = [], []
    for dtype_name in args.dtypes:
        steps = {}
        for name, share_layers, share_modalities, low_rank_dim, cache in VARIANTS:
            encoder = build(share_layers, share_modalities, low_rank_dim)
            steps[name] = make_step(encoder, PemtConfig().hidden_size, args.batch, args.segments, cache, dtypes[dtype_name])
        times = interleaved_times(steps, args.reps)
        baseline = statistics.median(times[VARIANTS[0][0]])
        for name, runs in times.items():
            median = statistics.median(runs)
            spread = (max(runs) - min(runs)) / median
            rows.append([dtype_name, name, f"{median * 1e3:.1f}", f"{spread:.0%}", f"{baseline / median:.2f}x"])
            results.append({"dtype": dtype_name, "variant": name, "median_s": median, "times_s": runs,
                            "speedup_vs_unshared": baseline / median})
        if args.profile:
            name = VARIANTS[1][0]
            with torch.profiler.profile() as profiler:
                steps[name]()
            print(f"## {dtype_name} {name}")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    print(f"# {command_line()}")
    print(f"# batch {args.batch}, {args.segments} segments (tokens: {args.segments + 1} per modality, "
          f"{2 * args.segments + 2} multimodal), fwd + bwd of all three Transformers, median of {args.reps}, "
          f"{torch.get_num_threads()} threads")
    print_table(["dtype", "variant", "ms", "spread (max-min)/median", "speed-up vs unshared"], rows)
    write_results("bench_transformers", {"batch": args.batch, "segments": args.segments, "reps": args.reps, "runs": results})


if __name__ == "__main__":
    main()
