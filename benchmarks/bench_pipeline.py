"""The audio-visual-classification pipeline end to end on a 30-second 720p clip, against the sum of its parts
measured alone (the processor turning the file into segments, and the classifier's forward pass on them). The
pipeline's own overhead (chunking views, collation, post-processing) is the difference.

    python benchmarks/bench_pipeline.py [--preset paper] [--runs 3] [--seconds 30] [--threads N] [--skip_parts]

Then the pipeline in float32 with contiguous CNNs (the layout before `cnn_memory_format`) against the pipeline with
the model in bfloat16 and channels-last CNNs (`pipeline(..., dtype=torch.bfloat16)`), interleaved: speed-up, whether
the top-1 label agrees, and the largest probability difference.

Prints tables (medians) and writes benchmarks/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import command_line, describe_hardware, hardware, median_seconds, print_table, write_results

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
    parser.add_argument("--skip_parts", action="store_true", help="only the float32 / bfloat16 comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PemtConfig.from_preset(args.preset, num_labels=32, cnn_memory_format="contiguous")
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(config).eval()
    processor = PemtProcessor.from_model_config(config)
    classifier = pipeline("audio-visual-classification", model=model, processor=processor)
    fast_config = PemtConfig.from_preset(args.preset, num_labels=32, cnn_memory_format="channels_last")
    fast_model = PemtForAudioVisualClassification(fast_config).eval()
    fast_model.load_state_dict(model.state_dict())
    fast = pipeline("audio-visual-classification", model=fast_model.to(torch.bfloat16), processor=processor)
    results = {"preset": args.preset, "seconds_of_video": args.seconds, "hardware": hardware()}
    with tempfile.TemporaryDirectory() as folder:
        clip = str(write_media(Path(folder) / "clip.mp4", seconds=args.seconds, fps=30, size=(720, 1280),
                               sample_rate=44100, channels=2, textured=True))
        top_k = config.num_labels
        reference = classifier(clip, top_k=top_k)  # also the warm-up: kernel selection and allocations
        if not args.skip_parts:
            inputs = processor(videos=clip)

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
            results.update({"processor_s": processing, "model_s": model_time, "pipeline_s": end_to_end,
                            "overhead": end_to_end / parts - 1})

        # float32 contiguous against bfloat16 channels-last, interleaved.
        ranking = fast(clip, top_k=top_k)
        # A randomly initialised paper-size model has logits of std ~25, so its softmax is saturated and probabilities
        # agree whatever the precision: the logits themselves are compared too (on the clip's first two segments).
        inputs = {k: v[:, :2] for k, v in processor(videos=clip).items()}
        with torch.no_grad():
            logits = model(**inputs).logits
            fast_logits = fast_model(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                        for k, v in inputs.items()}).logits.float()
        logit_error = ((fast_logits - logits).abs().max() / logits.std()).item()
        times = {"fp32": [], "bf16": []}
        for _ in range(args.runs):
            for name, pipe in (("fp32", classifier), ("bf16", fast)):
                begin = time.perf_counter()
                pipe(clip)
                times[name].append(time.perf_counter() - begin)
    fp32_scores = {e["label"]: e["score"] for e in reference}
    bf16_scores = {e["label"]: e["score"] for e in ranking}
    difference = max(abs(fp32_scores[k] - bf16_scores[k]) for k in fp32_scores)
    same_top1 = reference[0]["label"] == ranking[0]["label"]
    fp32_s, bf16_s = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(f"# {command_line()}")
    print(f"# {describe_hardware()}")
    print(f"# {args.seconds:.0f}-s 720p clip, preset {args.preset}; medians of {args.runs} interleaved runs")
    print_table(
        ["pipeline", "seconds", "speed-up", "same top-1", "max |p_fp32 - p_bf16|", "max |logit diff| / std(logits)"],
        [["fp32, contiguous CNNs", fp32_s, "1.00x", "", "", ""],
         ["bf16 weights, channels-last CNNs", bf16_s, f"{fp32_s / bf16_s:.2f}x", str(same_top1), f"{difference:.2e}",
          f"{logit_error:.3f}"]],
    )
    results.update({"fp32_s": fp32_s, "bf16_s": bf16_s, "speedup": fp32_s / bf16_s, "same_top1": same_top1,
                    "max_probability_difference": difference, "relative_logit_error": logit_error,
                    "times_s": times})
    write_results("bench_pipeline", results)


if __name__ == "__main__":
    main()
