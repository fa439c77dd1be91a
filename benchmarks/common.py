"""Helpers the benchmarks share: where results go, how a table is printed, and the command that reproduces a run."""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware() -> dict:
    """What the figures depend on: the CPU model and whether it has bf16 units (AVX-512-BF16 vector instructions,
    AMX matrix tiles), the GPU if any, and the thread count."""
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the flags stay unknown
        pass
    return {
        "cpu": model,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def describe_hardware(info: dict | None = None) -> str:
    info = info or hardware()
    units = "AMX" if info["amx_bf16"] else "AVX-512-BF16, no AMX" if info["avx512_bf16"] else "no bf16 units"
    gpu = f"; GPU {info['gpu']}" if info["gpu"] else "; no GPU"
    return f"{info['cpu']} ({units}){gpu}; {info['torch_threads']} thread(s)"


def matmul_peak_flops(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 4096, reps: int = 3) -> float:
    """FLOP/s of a large square matmul in `dtype`: the most this machine's math units reach (median of `reps`)."""
    device = torch.device(device)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up: thread pools, kernel selection
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    return 2 * size**3 / statistics.median(times)


def command_line() -> str:
    """The command that reproduces this run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parents[1])
    return shlex.join(["python", str(script), *sys.argv[1:]])


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table, so that the output pastes into the README as it is."""
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def write_results(name: str, results: dict) -> Path:
    """Writes `results` with the command and environment to `benchmarks/results/<name>.json`."""
    RESULTS_DIR.mkdir(exist_ok=True)
    results = {
        "command": command_line(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "hardware": hardware(),
        **results,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls of `fn`."""
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def floor_decode(path: Path, starts: list[float], span: float, threads: int | None = None) -> int:
    """PyAV alone, the floor a data path is measured against: seek to each span and decode its video and audio
    frames, touching nothing else; returns the number of frames decoded. `threads`: FFmpeg's video decoding
    threads (`None`: its automatic frame threading; 1 costs the least CPU per clip)."""
    decoded = 0
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        if threads is None:
            video.thread_type = "AUTO"
        else:
            video.thread_count = threads
        for stream in (video, audio):
            for start in starts:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    decoded += 1
                    if frame.time > start + span:
                        break
    return decoded
