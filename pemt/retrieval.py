"""Clip embedding indexes and search: `pemt index DIR --model M --output INDEX` and
`pemt search INDEX (--video Q | --audio Q | --clip Q) --top_k K`.

An index holds, per clip, the L2-normalised video, audio and joint embeddings (summary pooling) and the per-segment
CNN embeddings. Searches:

- clip-to-clip (`--clip Q`): cosine similarity of joint embeddings (one matrix product).
- sound-to-picture (`--audio Q`) and picture-to-sound (`--video Q`): by default the correct-pair-prediction head of
  a pretrained model scores the query's sound (picture) with every indexed clip's picture (sound), reusing the
  stored CNN embeddings, so only the Transformers run per pair. PEMT's unimodal embeddings are not trained to share
  a space across modalities; `scoring="cosine"` compares them anyway, as a baseline.

Plain torch: brute force is exact and, at the sizes a folder of clips gives, faster than building an approximate
index (see the README for the measurement).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .model.media_pemt import MediaDecodeError
from .model.modeling_pemt import PemtForPreTraining, PemtModel, PemtPreTrainedModel
from .model.processing_pemt import PemtProcessor

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
MODES = ("clip", "video", "audio")
SCORINGS = ("correspondence", "cosine")
# Pairs scored per forward pass in cross-modal search.
PAIR_BATCH = 256


@dataclass
class EmbeddingIndex:
    """Embeddings of `N` clips; tensors are row-aligned with `paths`."""

    paths: list[str]
    model: str
    video_embeds: torch.Tensor  # [N, hidden], L2-normalised
    audio_embeds: torch.Tensor  # [N, hidden], L2-normalised
    clip_embeds: torch.Tensor  # [N, 2 * hidden], L2-normalised
    visual_cnn: torch.Tensor  # [N, T, visual_embedding_dim]
    audio_cnn: torch.Tensor  # [N, T, audio_embedding_dim]
    visual_segment_mask: torch.Tensor  # [N, T]
    audio_segment_mask: torch.Tensor  # [N, T]
    skipped: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        try:
            return cls(**torch.load(path, weights_only=True))
        except (OSError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path}: not a pemt index ({error}).") from error


def load_model(model_dir: str | Path) -> tuple[PemtPreTrainedModel, PemtProcessor]:
    """A pretrained checkpoint loads with its correct-pair-prediction head; any other PEMT model as a backbone."""
    from .model.configuration_pemt import PemtConfig

    architectures = PemtConfig.from_pretrained(model_dir).architectures or []
    model_class = PemtForPreTraining if "PemtForPreTraining" in architectures else PemtModel
    return model_class.from_pretrained(model_dir).eval(), PemtProcessor.from_pretrained(model_dir)


@torch.no_grad()
def encode(model: PemtPreTrainedModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Index rows for a processor batch: normalised embeddings and the CNN embeddings."""
    backbone = model._feature_backbone()
    visual = backbone.embed_visual(inputs["pixel_values"], inputs["visual_segment_mask"])
    audio = backbone.embed_audio(inputs["audio_values"], inputs["audio_segment_mask"])
    features = model.get_features(
        visual_segment_mask=inputs["visual_segment_mask"], audio_segment_mask=inputs["audio_segment_mask"], normalize=True,
        visual_cnn_embeddings=visual, audio_cnn_embeddings=audio,
    )
    return {
        "video_embeds": features.video_embeds, "audio_embeds": features.audio_embeds,
        "clip_embeds": features.clip_embeds, "visual_cnn": visual, "audio_cnn": audio,
        "visual_segment_mask": inputs["visual_segment_mask"], "audio_segment_mask": inputs["audio_segment_mask"],
    }


def build_index(folder: str | Path, model_dir: str | Path, batch_size: int = 8) -> EmbeddingIndex:
    """Embeds every video under `folder` (recursively). A clip that cannot be decoded is reported and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory.")
    paths = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)}).")
    model, processor = load_model(model_dir)
    rows: dict[str, list[torch.Tensor]] = {}
    kept, skipped = [], {}
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            try:
                batch.append((path, processor(videos=path, require_video=True, require_audio=True)))
            except MediaDecodeError as error:
                print(f"skipped {error}", file=sys.stderr)
                skipped[path] = str(error)
        if not batch:
            continue
        inputs = {key: torch.cat([features[key] for _, features in batch]) for key in batch[0][1]}
        for key, value in encode(model, inputs).items():
            rows.setdefault(key, []).append(value)
        kept.extend(path for path, _ in batch)
    if not kept:
        raise ValueError(f"{folder}: none of the {len(paths)} video files could be read.")
    # A local model is recorded by its absolute path, so that the index can be searched from anywhere.
    model_ref = str(Path(model_dir).resolve()) if Path(model_dir).is_dir() else str(model_dir)
    return EmbeddingIndex(paths=kept, model=model_ref, skipped=skipped, **{k: torch.cat(v) for k, v in rows.items()})


@torch.no_grad()
def cross_modal_scores(
    model: PemtForPreTraining, index: EmbeddingIndex, query: dict[str, torch.Tensor], mode: str
) -> torch.Tensor:
    """Correspondence logits `[N]` of the query's picture (`mode="video"`) or sound (`"audio"`) with each indexed
    clip's other modality."""
    scores = []
    for start in range(0, len(index.paths), PAIR_BATCH):
        rows = slice(start, start + PAIR_BATCH)
        count = len(index.paths[rows])
        if mode == "video":
            pair = {
                "visual_cnn_embeddings": query["visual_cnn"].expand(count, -1, -1),
                "visual_segment_mask": query["visual_segment_mask"].expand(count, -1),
                "audio_cnn_embeddings": index.audio_cnn[rows], "audio_segment_mask": index.audio_segment_mask[rows],
            }
        else:
            pair = {
                "visual_cnn_embeddings": index.visual_cnn[rows], "visual_segment_mask": index.visual_segment_mask[rows],
                "audio_cnn_embeddings": query["audio_cnn"].expand(count, -1, -1),
                "audio_segment_mask": query["audio_segment_mask"].expand(count, -1),
            }
        scores.append(model.correspondence_logits(**pair))
    return torch.cat(scores)


def search(
    index: EmbeddingIndex,
    query: dict[str, torch.Tensor],
    mode: str,
    model: PemtPreTrainedModel | None = None,
    top_k: int = 5,
    scoring: str = "correspondence",
) -> list[dict]:
    """Ranks the indexed clips for one encoded query (a row of [`encode`]'s output, batch 1).

    `mode`: `"clip"` (joint embeddings, cosine), `"video"` (the query's picture against the indexed sounds) or
    `"audio"` (the query's sound against the indexed pictures). Cross-modal `scoring` is `"correspondence"`
    (probability from the pretrained model's head; needs `model`) or `"cosine"` (unimodal embeddings).
    Returns `[{"path", "score"}, ...]`, best first.
    """
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; choose one of {', '.join(MODES)}.")
    if mode == "clip":
        scores = index.clip_embeds @ query["clip_embeds"][0]
    elif scoring == "cosine":
        own, other = ("video_embeds", "audio_embeds") if mode == "video" else ("audio_embeds", "video_embeds")
        scores = getattr(index, other) @ query[own][0]
    elif scoring == "correspondence":
        if not isinstance(model, PemtForPreTraining):
            raise ValueError(
                f"{index.model}: sound-to-picture and picture-to-sound search by correspondence need a pretrained "
                "model (PemtForPreTraining); use scoring='cosine' or index with a pretrained checkpoint."
            )
        scores = cross_modal_scores(model, index, query, mode).sigmoid()
    else:
        raise ValueError(f"scoring is {scoring!r}; choose one of {', '.join(SCORINGS)}.")
    values, order = scores.topk(min(top_k, len(index.paths)))
    return [{"path": index.paths[i], "score": float(v)} for v, i in zip(values, order)]


def index_main(argv: list[str] | None = None) -> EmbeddingIndex:
    parser = argparse.ArgumentParser(prog="pemt index", description="Embed every video of a folder into an index file.")
    parser.add_argument("folder", help="A folder of video files (searched recursively).")
    parser.add_argument("--model", required=True, help="A saved PEMT model; a pretrained one enables cross-modal search.")
    parser.add_argument("--output", required=True, help="The index file to write (torch format).")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args(argv)
    index = build_index(args.folder, args.model, args.batch_size)
    index.save(args.output)
    print(f"indexed {len(index.paths)} clips ({len(index.skipped)} skipped) into {args.output}")
    return index


def search_main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="pemt search", description="Rank the clips of an index for a query file.")
    parser.add_argument("index", help="An index written by `pemt index`.")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--video", help="Picture-to-sound: clips whose sound goes with this file's picture.")
    query.add_argument("--audio", help="Sound-to-picture: clips whose picture goes with this file's sound.")
    query.add_argument("--clip", help="Clip-to-clip: clips most like this file (picture and sound together).")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--scoring", choices=SCORINGS, default="correspondence", help="Cross-modal scoring.")
    args = parser.parse_args(argv)
    index = EmbeddingIndex.load(args.index)
    model, processor = load_model(index.model)
    mode, path = next((m, getattr(args, m)) for m in MODES if getattr(args, m))
    need = {"clip": {"require_video": True, "require_audio": True}, "video": {"require_video": True},
            "audio": {"require_audio": True}}[mode]
    inputs = dict(processor(videos=path, **need))
    results = search(index, encode(model, inputs), mode, model, args.top_k, args.scoring)
    for rank, entry in enumerate(results, 1):
        print(f"{rank:3d}  {entry['score']:.3f}  {entry['path']}")
    return results
