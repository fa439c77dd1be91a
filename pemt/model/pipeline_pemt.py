"""The `"audio-visual-classification"` pipeline: video files (or decoded arrays) in, ranked labels out."""

from __future__ import annotations

from typing import Any

import torch
from transformers.pipelines.base import ChunkPipeline


class AudioVisualClassificationPipeline(ChunkPipeline):
    r"""
    Classifies videos with a PEMT classifier and its processor.

    Each input (a path, bytes, a binary file object, or a dict of decoded arrays — see [`PemtProcessor`]) is decoded
    once into `num_temporal_views` evenly shifted sets of segments, each seen through `num_spatial_crops` crops (3:
    left, centre, right); every view is one model row (so views and clips batch together with `batch_size`), and the
    class probabilities are averaged over the views.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classifier = pipeline("audio-visual-classification", model="path/to/finetuned", trust_remote_code=True)
    >>> classifier("clip.mp4", top_k=3)
    [{'label': 'dog barking', 'score': 0.91}, ...]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self, top_k: int | None = None, num_temporal_views: int | None = None, num_spatial_crops: int | None = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        preprocess = {} if num_temporal_views is None else {"num_temporal_views": num_temporal_views}
        if num_spatial_crops is not None:
            preprocess["num_spatial_crops"] = num_spatial_crops
        postprocess = {} if top_k is None else {"top_k": top_k}
        return preprocess, {}, postprocess

    def preprocess(self, inputs: Any, num_temporal_views: int = 1, num_spatial_crops: int = 1):
        features = self.processor(
            videos=inputs, num_temporal_views=num_temporal_views, num_spatial_crops=num_spatial_crops, return_tensors="pt"
        )
        views = num_temporal_views * num_spatial_crops
        for view in range(views):
            row = {key: value[view : view + 1] for key, value in features.items()}
            yield {"is_last": view == views - 1, **row}

    def _forward(self, model_inputs: dict) -> dict:
        is_last = model_inputs.pop("is_last")
        return {"logits": self.model(**self.model.select_inputs(model_inputs)).logits, "is_last": is_last}

    def postprocess(self, model_outputs: list[dict], top_k: int = 5) -> list[dict[str, float]]:
        logits = torch.cat([output["logits"] for output in model_outputs])
        probabilities = self.model.probabilities(logits, num_views=len(model_outputs))[0]
        scores, indices = probabilities.topk(min(top_k, probabilities.numel()))
        id2label = self.model.config.id2label
        return [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(scores, indices)]
