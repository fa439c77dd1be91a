"""Re-tunes the negative-sampling temperature: short pretraining runs with content-aware ("similar") negatives at
several temperatures, and uniform negatives for reference, scored on held-out clips with the one fixed sampler of
`pemt.training.pretrain.evaluate_pretraining` (uniform negatives, seeded draws), so the rows compare.

    python benchmarks/tune_negative_temperature.py --data_dir DATA/pretrain --seeds 2 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, print_table  # noqa: E402

from pemt.training import pretrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="A videofolder with train/ and test/ splits.")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--temperatures", default="0.05,0.1,0.3,1.0")
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()
    variants = [("uniform", "negative_sampling=uniform")] + [
        (f"similar, T={t}", f"negative_sampling=similar,negative_sampling_temperature={t}")
        for t in args.temperatures.split(",")
    ]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or str(Path(scratch) / "cache")
        for name, overrides in variants:
            scores = {"mep_accuracy": [], "cpp_accuracy": []}
            for seed in range(args.seeds):
                metrics = pretrain.main(
                    [
                        "--output_dir", str(Path(scratch) / f"{name}_{seed}"), "--train_dir", args.data_dir,
                        "--cache_dir", cache, "--model_config", args.preset, "--config_overrides", overrides,
                        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
                        "--seed", str(seed), "--no_progress_bar", "--checkpointing_steps", "100000",
                        "--logging_steps", "50",
                    ]
                )
                for key in scores:
                    scores[key].append(metrics[key])
            row = [name]
            for key in scores:
                values = scores[key]
                sd = statistics.stdev(values) if len(values) > 1 else float("nan")
                row.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
            rows.append(row)
            print(row, flush=True)
    print(f"\n{command_line()}\n")
    print_table(["negatives", "held-out MEP acc. (uniform sampler)", "held-out CPP acc."], rows)


if __name__ == "__main__":
    main()
