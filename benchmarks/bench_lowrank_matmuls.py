"""Do the low-rank Transformer's small matmuls matter, and would batching them pay?

1. Profile (`torch.profiler`) of the paper-size Transformer stack's forward + backward (the three shared low-rank
   Transformers, batch 5 x 10 segments, Sigma cached; `bench_transformers.py`'s step) in fp32 and bf16 autocast: the
   stack's time, the share of it in matmuls (`aten::mm`, `addmm`, `bmm`) and their count.
2. The batching the issue proposes, timed on the stack's own shapes (55 and 110 tokens): the Q, K, V down-projections
   `V_g x` as three matmuls or one (with the weights concatenated per call, as a batched layer would have to do
   to keep the state-dict keys, or pre-concatenated), and the rotations + up-projections of the three as six matmuls
   or two batched ones.
3. The stack's share of a fine-tuning step, from `bench_finetune_step.py`'s results file when one exists.

    python benchmarks/bench_lowrank_matmuls.py [--threads 1] [--reps 200]

Prints Markdown tables and writes benchmarks/results/bench_lowrank_matmuls.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from bench_transformers import build, make_step
from common import RESULTS_DIR, command_line, describe_hardware, hardware, print_table, write_results
from pemt import PemtConfig

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def micro_seconds(fn, reps: int) -> float:
    for _ in range(10):
        fn()
    begin = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - begin) / reps


def profile_stack(dtype: torch.dtype, steps: int = 3) -> dict:
    encoder = build(True, True, 128)
    step = make_step(encoder, PemtConfig().hidden_size, 5, 10, True, dtype)
    for _ in range(2):
        step()
    with torch.profiler.profile() as profiler:
        for _ in range(steps):
            step()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / steps / 1e6
    count = sum(e.count for e in events if e.key in MATMULS) // steps
    return {"stack_s": total, "matmul_s": matmul, "matmul_share": matmul / total, "matmul_calls": count}


def batching(dtype: torch.dtype, tokens: int, reps: int) -> dict:
    hidden, rank = PemtConfig().hidden_size, 128
    x = torch.randn(tokens, hidden, dtype=dtype)
    downs = [torch.randn(rank, hidden, dtype=dtype) for _ in range(3)]
    stacked = torch.cat(downs)
    codes = torch.randn(3, tokens, rank, dtype=dtype)
    sigmas = torch.randn(3, rank, rank, dtype=dtype)
    ups = torch.randn(3, rank, hidden, dtype=dtype)
    return {
        "down_separate_s": micro_seconds(lambda: [F.linear(x, w) for w in downs], reps),
        "down_one_cat_per_call_s": micro_seconds(lambda: F.linear(x, torch.cat(downs)), reps),
        "down_one_preconcatenated_s": micro_seconds(lambda: F.linear(x, stacked), reps),
        "rotate_up_separate_s": micro_seconds(lambda: [codes[i] @ sigmas[i] @ ups[i] for i in range(3)], reps),
        "rotate_up_batched_s": micro_seconds(lambda: torch.bmm(torch.bmm(codes, sigmas), ups), reps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    profiles = {name: profile_stack(dtype) for name, dtype in dtypes.items()}
    micro = {(name, tokens): batching(dtype, tokens, args.reps) for name, dtype in dtypes.items() for tokens in (55, 110)}

    step_s = None
    step_file = RESULTS_DIR / "bench_finetune_step_5x10_channels_last.json"
    if step_file.exists():
        runs = [r for r in json.loads(step_file.read_text())["runs"] if r["config"].startswith("full-bf16")]
        step_s = runs[0]["step_s"] if runs else None

    print(f"# {command_line()}")
    print(f"# {describe_hardware()}")
    print("# Transformer stack (3 shared low-rank Transformers, batch 5 x 10 segments), fwd + bwd, profiler self CPU time")
    print_table(
        ["dtype", "stack s/step", "in matmuls", "matmul calls/step", "stack of a 5x10 bf16 fine-tuning step"],
        [[name, f"{p['stack_s']:.3f}", f"{p['matmul_share']:.0%} ({p['matmul_s']:.3f} s)", p["matmul_calls"],
          f"{p['stack_s'] / step_s:.2%} of {step_s:.0f} s" if step_s else "(no step result)"]
         for name, p in profiles.items()],
    )
    print("# batching on the stack's shapes (microseconds per call, three modalities' or Q/K/V's worth)")
    rows = []
    for (name, tokens), m in micro.items():
        rows.append([name, tokens, f"{m['down_separate_s'] * 1e6:.0f}", f"{m['down_one_cat_per_call_s'] * 1e6:.0f}",
                     f"{m['down_one_preconcatenated_s'] * 1e6:.0f}", f"{m['rotate_up_separate_s'] * 1e6:.0f}",
                     f"{m['rotate_up_batched_s'] * 1e6:.0f}"])
    print_table(["dtype", "tokens", "3 down-proj.", "1 (cat per call)", "1 (pre-cat)", "3 x (Sigma, U)", "2 bmm"], rows)
    write_results("bench_lowrank_matmuls", {
        "profiles": profiles, "finetune_step_s": step_s, "hardware": hardware(),
        "batching": [{"dtype": name, "tokens": tokens, **m} for (name, tokens), m in micro.items()],
    })


if __name__ == "__main__":
    main()
