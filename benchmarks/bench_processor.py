"""How long PemtProcessor takes to turn a 30-second 720p clip into paper-size inputs, against the floor: PyAV
alone seeking to and decoding exactly the spans those segments cover (no resampling, conversion or resizing).

    python benchmarks/bench_processor.py [--runs 3] [--seconds 30]

Prints a table (medians) and writes benchmarks/results/bench_processor.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path

import av
import torch

from common import floor_decode, median_seconds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_fixtures import write_media  # noqa: E402

from pemt.model.configuration_pemt import PemtConfig  # noqa: E402
from pemt.model.processing_pemt import PemtProcessor, segment_starts  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    config = PemtConfig.from_preset("paper")
    processor = PemtProcessor.from_model_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_media(Path(tmp) / "clip.mp4", seconds=args.seconds, fps=30, size=(720, 1280), sample_rate=44100, channels=2, textured=True)
        span = processor.timing.span
        starts = segment_starts(args.seconds, span, config.num_segments)[0]

        floor = median_seconds(lambda: floor_decode(path, starts, span), args.runs)
        decode = median_seconds(lambda: processor.decode(str(path)), args.runs)
        full = median_seconds(lambda: processor(videos=str(path), return_tensors="pt"), args.runs)
        output = processor(videos=str(path), return_tensors="pt")

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("floor: PyAV seek + decode of the segments' spans", floor),
        ("pemt decode (frames to RGB, audio resampled)", decode),
        ("pemt processor (decode + resize/crop + log-mel)", full),
    ]
    print(f"{args.seconds:.0f}-s 720p h264/aac clip (scrolling noise), T={config.num_segments} segments x {config.frames_per_segment} frames, median of {args.runs}")
    print(f"{'step':52s} {'seconds':>8s} {'x floor':>8s}")
    for name, seconds in rows:
        print(f"{name:52s} {seconds:8.3f} {seconds / floor:8.2f}")
    print(f"peak RSS: {peak_rss_mb:.0f} MB; pixel_values {tuple(output['pixel_values'].shape)}")

    results = {
        "clip_seconds": args.seconds,
        "size": [720, 1280],
        "num_segments": config.num_segments,
        "runs": args.runs,
        "floor_s": floor,
        "decode_s": decode,
        "processor_s": full,
        "ratio": full / floor,
        "peak_rss_mb": peak_rss_mb,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "av": av.__version__,
    }
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench_processor.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
