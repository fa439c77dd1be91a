"""Mutations of a small clip, and a worker process that decodes files one at a time (for the fuzz test).

The worker reads paths on stdin and answers one JSON line per path on stdout: the processor's masks and whether
every value is finite and every masked segment zero, or the error's type and message. The parent enforces a time
limit per file and restarts the worker after a crash or a hang, so one bad file is charged with exactly what it did.
"""

from __future__ import annotations

import json
import sys

import numpy as np

MUTATIONS = ("flip_bytes", "truncate", "zero_block", "random_block", "duplicate_block", "delete_block", "insert_bytes", "swap_blocks")


def mutate(data: bytes, seed: int) -> tuple[str, bytes]:
    """One reproducible mutation of `data`: `(kind, mutated bytes)`. Kinds cycle so every seed range covers all."""
    rng = np.random.default_rng(seed)
    kind = MUTATIONS[seed % len(MUTATIONS)]
    out = bytearray(data)
    size = len(out)
    at = int(rng.integers(0, size))
    block = int(rng.integers(1, max(2, size // 8)))
    if kind == "flip_bytes":
        for position in rng.integers(0, size, int(rng.integers(1, 64))):
            out[position] = int(rng.integers(0, 256))
    elif kind == "truncate":
        out = out[:at]
    elif kind == "zero_block":
        out[at : at + block] = bytes(len(out[at : at + block]))
    elif kind == "random_block":
        out[at : at + block] = rng.integers(0, 256, len(out[at : at + block]), dtype=np.uint8).tobytes()
    elif kind == "duplicate_block":
        out[at:at] = out[at : at + block]
    elif kind == "delete_block":
        del out[at : at + block]
    elif kind == "insert_bytes":
        out[at:at] = rng.integers(0, 256, block, dtype=np.uint8).tobytes()
    elif kind == "swap_blocks":
        other = int(rng.integers(0, size))
        first, second = sorted((at, other))
        block = min(block, second - first)
        out[first : first + block], out[second : second + block] = out[second : second + block], out[first : first + block]
    return kind, bytes(out)


def _worker() -> None:
    import torch

    from pemt.model.configuration_pemt import PemtConfig
    from pemt.model.media_pemt import MediaDecodeError
    from pemt.model.processing_pemt import PemtProcessor

    torch.set_num_threads(1)
    processor = PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = line.strip()
        try:
            inputs = processor(videos=path)
            pixel_mask, audio_mask = inputs["visual_segment_mask"][0], inputs["audio_segment_mask"][0]
            answer = {
                "visual_segment_mask": pixel_mask.tolist(),
                "audio_segment_mask": audio_mask.tolist(),
                "finite": bool(torch.isfinite(inputs["pixel_values"]).all() and torch.isfinite(inputs["audio_values"]).all()),
                "masked_are_zero": bool(
                    (inputs["pixel_values"][0][pixel_mask == 0] == 0).all()
                    and (inputs["audio_values"][0][audio_mask == 0] == 0).all()
                ),
            }
        except Exception as err:  # reported to the parent, which decides what is acceptable
            answer = {"error": type(err).__name__, "message": str(err)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _worker()
