"""The audio-visual-classification pipeline end to end on a 30-second 720p clip, against the sum of its parts
measured alone (the processor turning the file into segments, and the classifier's forward pass on them). The
pipeline's own overhead (chunking views, collation, post-processing) is the difference.

    python benchmarks/bench_pipeline.py [--preset paper] [--runs 3] [--seconds 30] [--threads N]

Prints a table (medians) and writes benchmarks/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from common import command_line, median_seconds, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_fixtures import write_media  # noqa: E402
from transformers import pipeline  # noqa: E402

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtProcessor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PemtConfig.from_preset(args.preset, num_labels=32)
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(config).eval()
    processor = PemtProcessor.from_model_config(config)
    classifier = pipeline("audio-visual-classification", model=model, processor=processor)
    with tempfile.TemporaryDirectory() as folder:
        clip = str(write_media(Path(folder) / "clip.mp4", seconds=args.seconds, fps=30, size=(720, 1280),
                               sample_rate=44100, channels=2, textured=True))
        inputs = processor(videos=clip)
        classifier(clip)  # warm-up: first calls pay for kernel selection and allocations

        def forward():
            with torch.no_grad():
                model(**inputs)

        processing = median_seconds(lambda: processor(videos=clip), args.runs)
        model_time = median_seconds(forward, args.runs)
        end_to_end = median_seconds(lambda: classifier(clip), args.runs)
    parts = processing + model_time
    rows = [
        ["processor alone", processing, processing / parts],
        ["model forward alone", model_time, model_time / parts],
        ["sum of the parts", parts, 1.0],
        ["pipeline end to end", end_to_end, end_to_end / parts],
    ]
    print(f"# {command_line()}")
    print_table(["step", "seconds", "x sum of parts"], rows)
    write_results("bench_pipeline", {
        "preset": args.preset, "seconds_of_video": args.seconds,
        "processor_s": processing, "model_s": model_time, "pipeline_s": end_to_end, "overhead": end_to_end / parts - 1,
    })


if __name__ == "__main__":
    main()
