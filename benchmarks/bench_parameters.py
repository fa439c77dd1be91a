"""Parameters of the paper-size PEMT per sharing variant, split by part, against SPEC.md's Transformer counts.

The six variants are SPEC.md's table (layer sharing, cross-modal sharing, low-rank factors), each in both LayerNorm
layouts: shared across modalities (`share_layer_norms=True`, the authors' code and pemt's default) and private per
modality (SPEC.md's first description; it differs only where modalities share a Transformer). Parts: the visual CNN,
the audio CNN, the Transformers (`model.encoder`), and the rest of the backbone (CNN -> hidden projections, summary
tokens, position and token-type embeddings, LayerNorms outside the layers). Models are built on the meta device, so
no memory is allocated and the whole table takes seconds.

    python benchmarks/bench_parameters.py

Prints a Markdown table and writes benchmarks/results/bench_parameters.json.
"""

from __future__ import annotations

import argparse

import torch

from common import command_line, print_table, write_results
from pemt import PemtConfig, PemtModel

# SPEC.md's "Transformers" figure per variant: (name, share_layers, share_modalities, low_rank_dim, parameters).
VARIANTS = [
    ("no sharing", False, False, 0, 127.58e6),
    ("layer sharing", True, False, 0, 21.26e6),
    ("cross-modal sharing", False, True, 0, 42.53e6),
    ("layer + cross-modal", True, True, 0, 7.09e6),
    ("layer + cross-modal + low-rank (O=128)", True, True, 128, 3.84e6),
    ("cross-modal + low-rank, no layer sharing", False, True, 128, 23.06e6),
]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows, results = [], []
    for name, share_layers, share_modalities, low_rank_dim, spec in VARIANTS:
        for share_layer_norms in (True, False):
            config = PemtConfig(
                share_layers=share_layers, share_modalities=share_modalities, low_rank_dim=low_rank_dim,
                share_layer_norms=share_layer_norms,
            )
            with torch.device("meta"):
                model = PemtModel(config)
            parts = {
                "total": count(model),
                "visual_cnn": count(model.visual_cnn),
                "audio_cnn": count(model.audio_cnn),
                "transformers": count(model.encoder),
            }
            parts["embeddings_and_projections"] = (
                parts["total"] - parts["visual_cnn"] - parts["audio_cnn"] - parts["transformers"]
            )
            difference = (parts["transformers"] - spec) / spec
            layout = "shared" if share_layer_norms else "private"
            rows.append(
                [name, layout, f"{parts['transformers']:,}", f"{spec / 1e6:.2f}M", f"{difference:+.2%}",
                 *(f"{parts[k] / 1e6:.2f}M" for k in ("total", "visual_cnn", "audio_cnn", "embeddings_and_projections"))]
            )
            results.append(
                {"variant": name, "layer_norms": layout, **parts, "spec_transformers": spec, "relative_difference": difference}
            )
    print(f"# {command_line()}")
    print_table(
        ["variant", "LayerNorms", "Transformers (`model.encoder`)", "SPEC", "diff", "total", "visual CNN", "audio CNN",
         "embeddings + projections"],
        rows,
    )
    write_results("bench_parameters", {"variants": results})


if __name__ == "__main__":
    main()
