"""`pemt correspondence VIDEO [--audio OTHER]`: how likely the sound belongs with the picture, per clip and segment."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="pemt correspondence",
        description="Probability that a video's soundtrack (or another file's sound) belongs with its picture.",
    )
    parser.add_argument("video", help="A video file.")
    parser.add_argument("--audio", help="Score the picture against this file's sound instead of its own.")
    parser.add_argument("--model", required=True, help="A pretrained PEMT model directory or Hub id.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Needed for Hub ids loaded through their own code.")
    args = parser.parse_args(argv)
    from transformers import pipeline

    judge = pipeline("audio-visual-correspondence", model=args.model, trust_remote_code=args.trust_remote_code)
    result = judge({"video": args.video, "audio": args.audio} if args.audio else args.video)
    sound = args.audio or "its own soundtrack"
    print(f"{args.video} with {sound}: {result['score']:.3f}")
    for entry in result["segments"]:
        span = "" if entry["start"] is None else f"  {entry['start']:6.2f}-{entry['end']:6.2f} s"
        print(f"  segment {entry['segment']}{span}  {entry['score']:.3f}")
    return result
