"""The `"audio-visual-feature-extraction"` pipeline: video files in, clip embeddings (video, audio, joint) out."""

from __future__ import annotations

from typing import Any

import torch
from transformers.pipelines.base import Pipeline


class AudioVisualFeatureExtractionPipeline(Pipeline):
    r"""
    Clip embeddings of videos from any PEMT model (see [`PemtEmbeddingsMixin.get_features`]).

    Each input (a path, bytes, a binary file object, or a dict of decoded arrays — see [`PemtProcessor`]) gives a
    dict with `video_embedding` (the picture alone), `audio_embedding` (the sound alone) and `clip_embedding` (the
    two through the multimodal Transformer). An embedding is `None` when the clip lacks a modality it needs.

    Call arguments: `pooling` (`"summary"`, `"mean"` or `"summary_and_mean"`), `normalize` (L2, default `True`),
    `segment_embeddings` (also return the per-segment outputs of each Transformer, `[num_real_segments, hidden]`),
    `return_tensors` (torch tensors instead of lists).

    Example:

    ```python
    >>> from transformers import pipeline

    >>> extractor = pipeline("audio-visual-feature-extraction", model="path/to/pretrained", trust_remote_code=True)
    >>> features = extractor("clip.mp4")
    >>> len(features["video_embedding"]), len(features["clip_embedding"])
    (64, 128)
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        pooling: str | None = None,
        normalize: bool | None = None,
        segment_embeddings: bool | None = None,
        return_tensors: bool | None = None,
        **unknown,
    ) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(
                f"audio-visual-feature-extraction got unknown argument(s) {', '.join(sorted(unknown))}; it takes "
                "pooling, normalize, segment_embeddings and return_tensors (and batch_size, num_workers)."
            )
        forward = {key: value for key, value in (("pooling", pooling), ("normalize", normalize)) if value is not None}
        postprocess = {}
        if segment_embeddings is not None:
            postprocess["segment_embeddings"] = segment_embeddings
        if return_tensors is not None:
            postprocess["return_tensors"] = return_tensors
        return {}, forward, postprocess

    def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
        return dict(self.processor(videos=inputs, return_tensors="pt"))

    def _forward(self, model_inputs: dict, pooling: str = "summary", normalize: bool = True) -> dict:
        features = self.model.get_features(**model_inputs, pooling=pooling, normalize=normalize)
        output = features.model_output
        return {
            "video_embedding": features.video_embeds,
            "audio_embedding": features.audio_embeds,
            "clip_embedding": features.clip_embeds,
            "video_segments": output.visual_last_hidden_state[:, 1:],
            "audio_segments": output.audio_last_hidden_state[:, 1:],
            "visual_segment_mask": model_inputs["visual_segment_mask"],
            "audio_segment_mask": model_inputs["audio_segment_mask"],
        }

    def postprocess(self, model_outputs: dict, segment_embeddings: bool = False, return_tensors: bool = False) -> dict:
        has = {"video": bool(model_outputs["visual_segment_mask"][0].any()), "audio": bool(model_outputs["audio_segment_mask"][0].any())}
        needs = {"video_embedding": ("video",), "audio_embedding": ("audio",), "clip_embedding": ("video", "audio")}
        result = {}
        for key, modalities in needs.items():
            keep = all(has[m] for m in modalities)
            result[key] = model_outputs[key][0].float() if keep else None
        if segment_embeddings:
            for name, mask in (("video", "visual_segment_mask"), ("audio", "audio_segment_mask")):
                real = model_outputs[mask][0].bool()
                result[f"{name}_segment_embeddings"] = model_outputs[f"{name}_segments"][0][real].float() if has[name] else None
        if not return_tensors:
            result = {key: None if value is None else value.tolist() for key, value in result.items()}
        return result

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Saves the model and the processor, so that `pipeline(model=save_directory)` rebuilds this pipeline."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
