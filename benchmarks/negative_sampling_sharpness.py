"""How sharp content-aware negative sampling is at each temperature, on a pretrained model's CNN embeddings of
held-out clips: the effective number of candidates (exp of the sampling distribution's entropy) as a fraction of the
pool, how often a draw comes from the anchor's own clip, and the mean cosine (centred, as the sampler computes it)
of the drawn negatives to their anchor, against uniform sampling. No training: it shows what a temperature does to
the draw, which is what a re-tuning needs to know before it spends training runs.

    python benchmarks/negative_sampling_sharpness.py --model PRETRAINED_DIR --data_dir DATA/pretrain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, print_table  # noqa: E402

from pemt import PemtForPreTraining, PemtProcessor  # noqa: E402
from pemt.data.loading import collate, load_video_folder, preprocess_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A pretrained PEMT directory (model and processor).")
    parser.add_argument("--data_dir", required=True, help="A videofolder; its test split (or all of it) is used.")
    parser.add_argument("--batch_size", type=int, default=32, help="Clips per pool, as in training.")
    parser.add_argument("--temperatures", default="0.03,0.1,0.3,1.0")
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()
    model = PemtForPreTraining.from_pretrained(args.model).eval()
    processor = PemtProcessor.from_pretrained(args.model)
    loaded = load_video_folder(args.data_dir)
    clips = loaded["test"] if "test" in loaded else loaded
    data = preprocess_dataset(clips, processor, training=False, cache_dir=args.cache_dir)
    rows = {t: [] for t in ["uniform", *args.temperatures.split(",")]}
    with torch.no_grad():
        for start in range(0, len(data) - 1, args.batch_size):
            batch = collate([data[i] for i in range(start, min(start + args.batch_size, len(data)))], processor, training=False)
            for name, values, mask in (
                ("visual", model.pemt.embed_visual(batch["pixel_values"], batch["visual_segment_mask"]), batch["visual_segment_mask"]),
                ("audio", model.pemt.embed_audio(batch["audio_values"], batch["audio_segment_mask"]), batch["audio_segment_mask"]),
            ):
                real = mask.bool()
                pool = values[real].float()
                clip = torch.arange(real.shape[0])[:, None].expand_as(real)[real]
                centre = pool.mean(dim=0)
                cosine = F.normalize(pool - centre, dim=-1) @ F.normalize(pool - centre, dim=-1).T
                others = ~torch.eye(pool.shape[0], dtype=torch.bool)
                same_clip = (clip[:, None] == clip[None, :]) & others
                for key in rows:
                    logits = torch.zeros_like(cosine) if key == "uniform" else cosine / float(key)
                    p = logits.masked_fill(~others, float("-inf")).softmax(dim=-1)
                    entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=-1)
                    rows[key].append(
                        (
                            name,
                            float((entropy.exp() / (pool.shape[0] - 1)).mean()),
                            float((p * same_clip).sum(dim=-1).mean()),
                            float((p * cosine).sum(dim=-1).mean()),
                        )
                    )
    table = []
    for key, values in rows.items():
        for modality in ("visual", "audio"):
            picked = [v[1:] for v in values if v[0] == modality]
            means = [sum(column) / len(column) for column in zip(*picked)]
            label = "uniform" if key == "uniform" else f"similar, T={key}"
            table.append([label, modality, *means])
    print(f"\n{command_line()}\n")
    print_table(["sampler", "modality", "effective candidates / pool", "P(own clip)", "mean cosine of negatives"], table)


if __name__ == "__main__":
    main()
