"""Runs every benchmark in turn (what `make benchmark` does); each prints its table and writes its JSON to
benchmarks/results/. A new benchmark joins by adding a line to `BENCHMARKS`.

    python benchmarks/run_all.py [--only bench_transformers ...]

The paper-size fine-tuning step runs the key configurations only (full sharing + low rank in bf16, checkpointing off
and on): on a 2-core CPU each takes several minutes. All eight configurations run at a reduced size.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, arguments): run in this order. One thread where timings are compared: on a shared machine, OpenMP threads
# that oversubscribe the cores made the same step swing by 3x or more.
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench_parameters", []),
    ("bench_avbert_equivalence", []),
    ("bench_processor", []),
    ("bench_transformers", ["--threads", "1"]),
    ("bench_finetune_step", ["--clips", "1", "--segments", "2", "--chunk_size", "1", "--threads", "1"]),
    ("bench_finetune_step", ["--configs", "full-bf16-on", "full-bf16-off", "--threads", "1"]),
    ("bench_pipeline", []),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="run only these scripts (names without .py)")
    args = parser.parse_args()
    failed = []
    for script, arguments in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        print(f"\n## {script} {' '.join(arguments)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{script}.py"), *arguments]).returncode != 0:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
