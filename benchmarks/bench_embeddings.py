"""Issue 15's measurements on held-out clips: correspondence ROC AUC (true vs swapped soundtracks, through the
pipeline), cross-modal retrieval recall@1/@5 against chance, clip-to-clip class precision, brute-force search time,
and exported-vs-eager differences.

    python benchmarks/bench_embeddings.py --model PRETRAINED --clips DEMO/test [--classifier FINETUNED] [--export]

`--clips` is a folder of `<class>/<clip>.mp4` (the demo data's test split); a clip's class is its folder's name.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from common import print_table, write_results
from sklearn.metrics import roc_auc_score
from transformers import pipeline

from pemt.export import export
from pemt.retrieval import build_index, load_model


def derangement(n: int, rng: random.Random) -> list[int]:
    """A random permutation without fixed points: every clip gets another clip's sound."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def correspondence_auc(model_dir: str, paths: list[str], classes: list[str], seed: int) -> dict:
    judge = pipeline("audio-visual-correspondence", model=model_dir)
    rng = random.Random(seed)
    other = derangement(len(paths), rng)
    same_class = []
    for i, name in enumerate(classes):
        mates = [j for j, c in enumerate(classes) if c == name and j != i]
        same_class.append(rng.choice(mates))
    true = [judge(p) for p in paths]
    swapped = [judge({"video": p, "audio": paths[j]}) for p, j in zip(paths, other)]
    swapped_same = [judge({"video": p, "audio": paths[j]}) for p, j in zip(paths, same_class)]

    def auc(positives: list[dict], negatives: list[dict], key: str) -> float:
        if key == "clip":
            pos, neg = [r["score"] for r in positives], [r["score"] for r in negatives]
        else:
            pos = [s["score"] for r in positives for s in r["segments"]]
            neg = [s["score"] for r in negatives for s in r["segments"]]
        return float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg))

    return {
        "clips": len(paths),
        "auc_clip_any_swap": auc(true, swapped, "clip"),
        "auc_segment_any_swap": auc(true, swapped, "segment"),
        "auc_clip_same_class_swap": auc(true, swapped_same, "clip"),
        "auc_segment_same_class_swap": auc(true, swapped_same, "segment"),
        "mean_score_true": sum(r["score"] for r in true) / len(true),
        "mean_score_swapped": sum(r["score"] for r in swapped) / len(swapped),
    }


def recall_at(scores: torch.Tensor, k: int) -> float:
    """`scores[q, c]`: query q's score for candidate c; the right candidate of query q is c = q."""
    top = scores.topk(k, dim=1).indices
    return float((top == torch.arange(scores.shape[0])[:, None]).any(dim=1).float().mean())


@torch.no_grad()
def retrieval(model_dir: str, folder: str) -> tuple[dict, list[list]]:
    started = time.perf_counter()
    index = build_index(folder, model_dir)
    index_seconds = time.perf_counter() - started
    model, _ = load_model(model_dir)
    n = len(index.paths)
    # correspondence[v, a]: the picture of clip v with the sound of clip a.
    correspondence = torch.empty(n, n)
    for v in range(n):
        correspondence[v] = model.correspondence_logits(
            visual_cnn_embeddings=index.visual_cnn[v : v + 1].expand(n, -1, -1), visual_segment_mask=index.visual_segment_mask[v : v + 1].expand(n, -1),
            audio_cnn_embeddings=index.audio_cnn, audio_segment_mask=index.audio_segment_mask,
        )
    cosine = index.video_embeds @ index.audio_embeds.T
    rows = []
    results = {"clips": n, "index_seconds": index_seconds}
    for name, matrix in (("correspondence head", correspondence), ("cosine of unimodal embeddings", cosine)):
        for direction, scores in (("audio -> video", matrix.T), ("video -> audio", matrix)):
            r1, r5 = recall_at(scores, 1), recall_at(scores, 5)
            rows.append([direction, name, r1, r5, 1 / n, 5 / n])
            results[f"{direction} {name}"] = {"recall@1": r1, "recall@5": r5}
    classes = [Path(p).parent.name for p in index.paths]
    similarity = index.clip_embeds @ index.clip_embeds.T
    similarity.fill_diagonal_(-2.0)
    top = similarity.topk(5, dim=1).indices
    same = torch.tensor([[classes[j] == classes[i] for j in row] for i, row in enumerate(top.tolist())]).float()
    mates = sum(c == classes[0] for c in classes) - 1
    results["clip-to-clip same-class precision@5"] = float(same.mean())
    results["clip-to-clip chance"] = mates / (n - 1)
    return results, rows


def brute_force_search_seconds(sizes: tuple[int, ...], dim: int, queries: int = 32) -> list[list]:
    rows = []
    for size in sizes:
        index = torch.nn.functional.normalize(torch.randn(size, dim), dim=-1)
        query = torch.nn.functional.normalize(torch.randn(queries, dim), dim=-1)
        (index[:1000] @ query.T).topk(5, dim=0)
        started = time.perf_counter()
        (index @ query.T).topk(5, dim=0)
        rows.append([size, dim, (time.perf_counter() - started) / queries * 1000, size * dim * 4 / 2**20])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A pretrained PEMT (PemtForPreTraining) directory.")
    parser.add_argument("--clips", required=True, help="Held-out clips: <class>/<clip>.mp4.")
    parser.add_argument("--classifier", help="A fine-tuned classifier directory, to export.")
    parser.add_argument("--export", action="store_true", help="Also export to ONNX and torch.export and compare.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    paths = sorted(str(p) for p in Path(args.clips).glob("*/*.mp4"))
    classes = [Path(p).parent.name for p in paths]

    results = {"correspondence": correspondence_auc(args.model, paths, classes, args.seed)}
    c = results["correspondence"]
    print(f"\nCorrespondence pipeline, {c['clips']} held-out clips, true vs swapped soundtracks (ROC AUC; chance 0.5)")
    print_table(
        ["swap", "clip AUC", "segment AUC"],
        [["another clip's sound (any class)", c["auc_clip_any_swap"], c["auc_segment_any_swap"]],
         ["another clip's sound (same class)", c["auc_clip_same_class_swap"], c["auc_segment_same_class_swap"]]],
    )

    retrieval_results, rows = retrieval(args.model, args.clips)
    results["retrieval"] = retrieval_results
    print(f"\nCross-modal retrieval among {retrieval_results['clips']} held-out clips (the query's own clip is the answer)")
    print_table(["direction", "scoring", "recall@1", "recall@5", "chance@1", "chance@5"], rows)
    print(
        f"\nClip-to-clip (joint embeddings, cosine): same-class precision@5 "
        f"{retrieval_results['clip-to-clip same-class precision@5']:.3f} (chance {retrieval_results['clip-to-clip chance']:.3f})"
    )

    search_rows = brute_force_search_seconds((10_000, 100_000, 1_000_000), dim=128)
    results["brute_force_search"] = search_rows
    print("\nBrute-force cosine top-5 in torch (one query, averaged over 32 batched queries)")
    print_table(["indexed clips", "dim", "ms per query", "index MiB"], search_rows)

    if args.export:
        exports = []
        with tempfile.TemporaryDirectory() as folder:
            for model_dir, target in ((args.model, "features"), (args.classifier, "classifier")):
                if model_dir is None:
                    continue
                for fmt, suffix in (("torch", "pt2"), ("onnx", "onnx")):
                    started = time.perf_counter()
                    report = export(model_dir, Path(folder) / f"{target}.{suffix}", fmt, target)
                    exports.append([target, fmt, report["max_abs_diff_batch_1"], report["max_abs_diff_batch_3"],
                                    time.perf_counter() - started])
        results["export"] = exports
        print("\nExported vs eager (max abs difference over all outputs; inputs include a padded clip)")
        print_table(["model", "format", "batch 1", "batch 3", "export + check s"], exports)
    path = write_results("embeddings", results)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
