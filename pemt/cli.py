"""The `pemt` command: `pemt [--debug] {make-demo-data,pretrain,finetune,evaluate,classify,push,demo} ...`.

Errors are one line on stderr naming the problem and, where there is one, the fix; no traceback unless `--debug`
is given (anywhere on the command line) or `PEMT_DEBUG=1`. Exit status: 0 done, 1 a runtime error, 2 a usage error
(bad option values, conflicting options, an output folder owned by another run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import PemtUsageError, one_line, usage_exit

# One line per subcommand: name -> ("module:function" taking the remaining arguments, what it does). The module is
# imported only when its command runs, so `pemt --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-data": ("pemt.data.demo:main", "Write the small labelled audio-visual demo data set (videofolder layout)."),
    "prepare": ("pemt.data.prepare:main", "Transcode videos once into training-ready shards with a manifest (resumable, parallel)."),
    "pretrain": ("pemt.training.pretrain:main", "Self-supervised pretraining (MEP + CPP) on unlabeled video."),
    "finetune": ("pemt.training.finetune:main", "Fine-tune a classifier (audio-visual, visual or audio; linear probe optional)."),
    "evaluate": ("pemt.training.evaluate:main", "Top-1/top-5 accuracy or mAP of a fine-tuned classifier, with a confusion matrix."),
    "classify": ("pemt.cli:classify", "Classify video files with the audio-visual-classification pipeline."),
    "push": ("pemt.cli:push", "Upload a fine-tuned model directory to the Hub (weights, code, processor, pipeline, card)."),
    "convert-avbert": (
        "pemt.conversion.avbert:main",
        "Convert an AVBERT checkpoint of the authors (fine-tuned or pretrained) into a pemt model directory.",
    ),
    "correspondence": ("pemt.correspondence:main", "Probability that a video's sound (or another file's) belongs with its picture."),
    "index": ("pemt.retrieval:index_main", "Embed a folder of videos into a search index."),
    "search": ("pemt.retrieval:search_main", "Sound-to-picture, picture-to-sound or clip-to-clip search in an index."),
    "export": ("pemt.export:main", "Export a model to ONNX or torch.export with a dynamic batch, checked against PyTorch."),
    "ablate": ("pemt.training.ablate:main", "Run the paper's ablations (sharing, negatives, pretraining, objectives) over seeds."),
    "demo": ("pemt.cli:demo", "Make the demo data, pretrain, fine-tune, evaluate and classify: the whole path in minutes on a CPU."),
}
SUBCOMMANDS = {name: text for name, (_, text) in COMMANDS.items()}  # name -> description, for parsers' help


class ArgumentParser(argparse.ArgumentParser):
    """argparse with pemt's one-line usage errors."""

    def error(self, message: str):
        usage_exit(self.prog, message)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def classify(argv: list[str]) -> list:
    """Prints a ranking per readable file and an `error:` line (stderr) per unreadable one; exits with status 1
    when some file could not be classified, after all the others were."""
    parser = ArgumentParser(prog="pemt classify", description=SUBCOMMANDS["classify"])
    parser.add_argument("videos", nargs="+", help="Video files.")
    parser.add_argument("--model", required=True, help="A fine-tuned model directory or Hub id.")
    parser.add_argument("--top_k", type=_positive, default=5)
    parser.add_argument("--num_temporal_views", type=_positive, default=1)
    parser.add_argument("--batch_size", type=_positive, default=1)
    parser.add_argument(
        "--trust_remote_code", action="store_true",
        help="Run the repository's own copy of the code instead of the installed pemt's (not needed for pemt models).",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32",
        help="Weights and compute dtype; bfloat16 is about 2x faster on CPUs with AVX-512-BF16 or AMX, and on GPUs.",
    )
    parser.add_argument(
        "--torch_compile", action="store_true",
        help="Compile the CNNs with torch.compile (inductor): pays off over many clips of one size; the first costs "
        "tens of seconds of compilation.",
    )
    args = parser.parse_args(argv)
    import torch
    from transformers import pipeline

    from .model.pipeline_pemt import AudioVisualClassificationPipeline

    # pemt is installed (this command is part of it), so its own pipeline class serves; transformers otherwise asks
    # for trust_remote_code because a pushed model's config names the pipeline's copy in the repository.
    pipeline_class = None if args.trust_remote_code else AudioVisualClassificationPipeline
    classifier = pipeline(
        "audio-visual-classification", model=args.model, trust_remote_code=args.trust_remote_code,
        pipeline_class=pipeline_class, dtype=getattr(torch, args.dtype),
        # Only when asked: a repository's own (older) pipeline code may not take the argument.
        **({"torch_compile": True} if args.torch_compile else {}),
    )
    results = classifier(
        args.videos, top_k=args.top_k, num_temporal_views=args.num_temporal_views, batch_size=args.batch_size,
        errors="return",
    )
    failed = 0
    for video, ranking in zip(args.videos, results):
        if isinstance(ranking, dict):
            failed += 1
            print(f"error: {ranking['error']}", file=sys.stderr, flush=True)
            continue
        print(video)
        for entry in ranking:
            print(f"  {entry['score']:.3f}  {entry['label']}")
    if failed:
        print(f"error: {failed} of {len(args.videos)} file(s) could not be classified.", file=sys.stderr)
        raise SystemExit(1)
    return results


def push(argv: list[str]) -> str:
    parser = ArgumentParser(prog="pemt push", description=SUBCOMMANDS["push"])
    parser.add_argument("model_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--license", default="apache-2.0", help="License of the weights (a Hub license id).")
    parser.add_argument("--base_model", default=None, help="Hub id of the pretrained model fine-tuned from, when the "
                        "training arguments name a local folder.")
    args = parser.parse_args(argv)
    from .hub import push_to_hub

    url = push_to_hub(args.model_dir, args.repo_id, private=args.private, license=args.license, base_model=args.base_model)
    print(url)
    return url


def demo(argv: list[str]) -> dict:
    """Runs the whole path on the demo data and prints where each result is."""
    parser = ArgumentParser(prog="pemt demo", description=SUBCOMMANDS["demo"])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--pretraining_steps", type=int, default=DEMO_PRETRAINING_STEPS)
    parser.add_argument("--finetuning_steps", type=int, default=DEMO_FINETUNING_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .data.demo import make_demo_data
    from .training import finetune, pretrain

    out = Path(args.output_dir)
    data, pretrained, finetuned = out / "data", out / "pretrained", out / "finetuned"
    cache = out / "cache"
    started = time.perf_counter()
    timings = {}

    def stage(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        print(f"[demo] {name} done after {time.perf_counter() - started:.0f} s", flush=True)

    make_demo_data(data, seed=args.seed, workers=2)
    stage("demo data")
    # A demo run replaces the previous one in the same folder.
    # The demo set is tiny: decoding it once beats decoding every epoch (README, "Training at scale").
    common = ["--train_dir", str(data), "--cache_dir", str(cache), "--seed", str(args.seed), "--model_config", "small",
              "--overwrite_output_dir", "--data_mode", "in_memory"]
    pretraining = pretrain.main(
        ["--output_dir", str(pretrained), "--max_steps", str(args.pretraining_steps), *DEMO_PRETRAINING_ARGS, *common]
    )
    stage("pretraining")
    finetuning = finetune.main(
        [
            "--output_dir", str(finetuned), "--model_name_or_path", str(pretrained),
            "--max_steps", str(args.finetuning_steps), "--num_temporal_views", "2", *DEMO_FINETUNING_ARGS, *common,
        ]
    )
    stage("fine-tuning and evaluation")
    held_out = sorted((data / "test").glob("*/*.mp4"))[0]
    print(f"[demo] classifying a held-out clip ({held_out.parent.name}): {held_out}")
    ranking = classify([str(held_out), "--model", str(finetuned), "--top_k", "3", "--num_temporal_views", "2"])[0]
    stage("classification")
    summary = {
        "pretraining_eval": pretraining,
        "finetuning_eval": {k: v for k, v in (finetuning or {}).items() if isinstance(v, float)},
        "classified_clip": str(held_out),
        "true_label": held_out.parent.name,
        "prediction": ranking,
        "seconds": timings,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        "\n[demo] results:\n"
        f"  demo data:            {data} (train/ and test/, info.json describes the rule)\n"
        f"  pretrained model:     {pretrained} (pretraining.png, eval_results.json, logs/ for TensorBoard)\n"
        f"  fine-tuned model:     {finetuned} (finetuning.png, eval_results.json, confusion_matrix.png)\n"
        f"  model card:           {finetuned / 'README.md'}\n"
        f"  summary:              {out / 'demo_summary.json'}\n"
        f"  total time:           {time.perf_counter() - started:.0f} s"
    )
    return summary


# The demo's budget: minutes on two CPU cores. Held-out figures these settings reach are in the README.
# Batch 32 is what makes correct pair prediction leave chance within a few hundred steps (it needs other clips'
# audio to contrast); the learning rate is pretraining's default.
DEMO_PRETRAINING_STEPS = 400
DEMO_FINETUNING_STEPS = 60
DEMO_PRETRAINING_ARGS = ["--per_device_train_batch_size", "32", "--checkpointing_steps", "100", "--logging_steps", "10",
                         "--eval_steps", "100"]
DEMO_FINETUNING_ARGS = ["--per_device_train_batch_size", "8", "--checkpointing_steps", "30", "--logging_steps", "10"]


def resolve(command: str) -> Callable[[list[str]], object]:
    """The function that runs `command`, imported from its module."""
    module, function = COMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module), function)


def run(command: str, argv: list[str], debug: bool = False) -> int:
    """Runs one subcommand and turns its errors into one line on stderr and an exit status."""
    prog = f"pemt {command}"
    try:
        resolve(command)(argv)
    except SystemExit as done:  # argparse (--help, usage errors already printed) or a command's own exit
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except Exception as error:  # noqa: BLE001 - every error becomes one line; --debug shows where it came from
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        sys.stderr.write(f"{prog}: error: {one_line(error)}{hint if not isinstance(error, PemtUsageError) else ''}\n")
        return 2 if isinstance(error, PemtUsageError) else 1
    return 0


def print_usage() -> None:
    print("usage: pemt [--debug] {" + ",".join(COMMANDS) + "} ...\n")
    for name, text in SUBCOMMANDS.items():
        print(f"  {name:15s} {text}")
    print("\n  --debug         show the traceback of an error")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PEMT_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print_usage()
        raise SystemExit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        usage_exit("pemt", f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
    status = run(argv[0], argv[1:], debug)
    if status:  # returning normally on success keeps `main([...])` usable from Python
        raise SystemExit(status)


def module_main(command: str) -> None:
    """Entry point of `python -m pemt.training.<command>` (what `accelerate launch -m` runs): the same error
    handling as `pemt <command>`."""
    main([command, *sys.argv[1:]])


if __name__ == "__main__":
    main()
