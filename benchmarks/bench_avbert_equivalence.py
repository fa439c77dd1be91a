"""How closely a converted AVBERT checkpoint reproduces the authors' forward pass, and how far the wrong conversions
land (negative controls).

The reference (tests/fixtures/avbert_reference.pt, made from the authors' own code at a tiny size) is written into
their fine-tuned checkpoint container with their YAML config beside it, converted with `pemt convert-avbert`'s
function, and run on the reference's inputs with both attention back-ends. Differences are max |pemt - authors| and
that divided by the reference tensor's largest magnitude.

    python benchmarks/bench_avbert_equivalence.py [--reference PATH]

Prints Markdown tables and writes benchmarks/results/bench_avbert_equivalence.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from common import command_line, print_table, write_results
from pemt.conversion import convert_avbert_checkpoint
from pemt.conversion.avbert_check import compare_with_reference

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "avbert_reference.pt"
TRANSFORMER_OUTPUTS = [f"{m}_{o}" for m in ("visual", "audio", "multimodal") for o in ("layer_outputs", "sequence_output")]


def convert(reference: dict, state_dict: dict, attention: str):
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, config = Path(tmp) / "finetuned.pyth", Path(tmp) / "config.yaml"
        torch.save({"epoch": 0, "model_state_dict": state_dict, "optimizer": {}}, checkpoint)
        config.write_text(yaml.safe_dump(reference["config"]))
        model = convert_avbert_checkpoint(checkpoint, authors_config=config).model
    model.config._attn_implementation = attention
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    args = parser.parse_args()
    reference = torch.load(args.reference, weights_only=True)
    state_dict = reference["state_dict"]
    results = {backend: compare_with_reference(convert(reference, state_dict, backend), reference) for backend in ("eager", "sdpa")}

    # Negative controls: what a converter that got Sigma's orientation or Q/K wrong would give.
    transposed = convert(reference, state_dict, "sdpa")
    state = transposed.state_dict()
    for name in state:
        if name.endswith("parametrizations.weight.0.base"):
            state[name] = state[name].T.clone(memory_format=torch.contiguous_format)
    transposed.load_state_dict(state)
    swap = {".factor_query.": ".factor_key.", ".factor_key.": ".factor_query."}
    swapped_dict = {}
    for key, value in state_dict.items():
        for old, new in swap.items():
            if old in key:
                key = key.replace(old, new)
                break
        swapped_dict[key] = value
    controls = {
        "Sigma not transposed": compare_with_reference(transposed, reference),
        "Q and K swapped": compare_with_reference(convert(reference, swapped_dict, "sdpa"), reference),
    }

    print(f"# {command_line()}")
    rows = [
        [name, f"{results['eager'][name][0]:.1e}", f"{results['eager'][name][1]:.1e}", f"{results['sdpa'][name][0]:.1e}",
         f"{results['sdpa'][name][1]:.1e}"]
        for name in results["eager"]
    ]
    print_table(["output", "eager: max abs", "eager: relative", "SDPA: max abs", "SDPA: relative"], rows)
    print()
    control_rows = [
        [name, f"{max(d[n][1] for n in ('visual_cnn_embeddings', 'audio_cnn_embeddings')):.1e}",
         f"{max(d[n][1] for n in TRANSFORMER_OUTPUTS):.1e}", f"{d['clip_probability'][1]:.1e}"]
        for name, d in {"correct conversion (SDPA)": results["sdpa"], **controls}.items()
    ]
    print_table(["conversion", "CNN embeddings (max rel.)", "Transformer outputs (max rel.)", "clip probability (rel.)"], control_rows)
    write_results(
        "bench_avbert_equivalence",
        {"reference": str(args.reference), "differences": results, "negative_controls": controls},
    )


if __name__ == "__main__":
    main()
