"""PNG plots of a run's logged history."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history_file: str | Path, output_png: str | Path, title: str) -> Path:
    """Plots every logged loss (left) and accuracy (right) of `history.jsonl` against the step."""
    rows = [json.loads(line) for line in Path(history_file).read_text().splitlines() if line.strip()]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and ("loss" in key or "accuracy" in key):
                steps, values = series.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(value)
    figure, (losses, accuracies) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, (steps, values) in sorted(series.items()):
        axis = accuracies if "accuracy" in key else losses
        axis.plot(steps, values, marker="o" if key.startswith("eval/") else None, markersize=3, label=key)
    losses.set(title="losses", xlabel="step")
    accuracies.set(title="accuracies", xlabel="step", ylim=(0, 1))
    for axis in (losses, accuracies):
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    output_png = Path(output_png)
    figure.savefig(output_png, dpi=100)
    plt.close(figure)
    return output_png
