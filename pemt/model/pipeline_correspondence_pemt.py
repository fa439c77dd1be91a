"""The `"audio-visual-correspondence"` pipeline: does this sound belong with this picture, per clip and segment?"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.pipelines.base import Pipeline

from .media_pemt import MediaDecodeError, open_media
from .processing_pemt import segment_starts


class AudioVisualCorrespondencePipeline(Pipeline):
    r"""
    The probability that a video's soundtrack belongs with its picture, from the correct-pair-prediction head of a
    pretrained [`PemtForPreTraining`] (see [`~PemtForPreTraining.correspondence_logits`]), for the clip as a whole
    and for each segment on its own.

    An input is a video (a path, bytes, or a dict of decoded arrays — see [`PemtProcessor`]) scored with its own
    soundtrack, or `{"video": ..., "audio": ...}` to score the picture of one file against the sound of another
    (dubbing, a swapped or re-edited soundtrack). Each file's segments are spread evenly over that file, so for
    files of equal length segment `t` covers the same time in both.

    Returns, per input: `{"score": float, "segments": [{"segment", "start", "end", "score"}, ...]}`; `start` and
    `end` are seconds in the video (`None` for file objects, whose duration is not read twice). Segments that are
    padding in either file are left out.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> judge = pipeline("audio-visual-correspondence", model="path/to/pretrained", trust_remote_code=True)
    >>> judge({"video": "interview.mp4", "audio": "dubbed.wav"})["score"]
    0.12
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, **unknown) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(
                f"audio-visual-correspondence got unknown argument(s) {', '.join(sorted(unknown))}; it takes none "
                "(besides batch_size and num_workers): pass {'video': ..., 'audio': ...} to score another file's sound."
            )
        return {}, {}, {}

    def preprocess(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, dict) and "video" in inputs:
            video, audio = inputs["video"], inputs.get("audio")
        else:
            video, audio = inputs, None
        features = dict(self.processor(videos=video, require_video=True, require_audio=audio is None, return_tensors="pt"))
        if audio is not None:
            sound = self.processor(videos=audio, require_audio=True, return_tensors="pt")
            features["audio_values"], features["audio_segment_mask"] = sound["audio_values"], sound["audio_segment_mask"]
        features["starts"] = self._segment_starts(video)
        return features

    def _segment_starts(self, video: Any) -> list[float] | None:
        if not isinstance(video, (str, os.PathLike, bytes, dict)):
            return None
        try:
            with open_media(video) as clip:
                duration = clip.duration
        except MediaDecodeError:
            return None
        span = self.processor.timing.span
        if duration < span:
            return [0.0] * self.processor.num_segments
        return segment_starts(duration, span, self.processor.num_segments)[0]

    def _forward(self, model_inputs: dict) -> dict:
        starts = model_inputs.pop("starts")
        model = self.model
        visual = model.pemt.embed_visual(model_inputs["pixel_values"], model_inputs["visual_segment_mask"])
        audio = model.pemt.embed_audio(model_inputs["audio_values"], model_inputs["audio_segment_mask"])
        masks = {"visual_segment_mask": model_inputs["visual_segment_mask"], "audio_segment_mask": model_inputs["audio_segment_mask"]}
        clip = model.correspondence_logits(visual_cnn_embeddings=visual, audio_cnn_embeddings=audio, **masks)
        segments = model.correspondence_logits(visual_cnn_embeddings=visual, audio_cnn_embeddings=audio, per_segment=True, **masks)
        return {"clip": clip, "segments": segments, "starts": starts}

    def postprocess(self, model_outputs: dict) -> dict[str, Any]:
        starts = model_outputs["starts"]
        span = self.processor.timing.span
        segments = []
        for index, logit in enumerate(model_outputs["segments"][0].float()):
            if torch.isnan(logit):
                continue
            start = None if starts is None else round(float(starts[index]), 3)
            end = None if starts is None else round(float(starts[index]) + span, 3)
            segments.append({"segment": index, "start": start, "end": end, "score": float(logit.sigmoid())})
        return {"score": float(model_outputs["clip"][0].float().sigmoid()), "segments": segments}

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Saves the model and the processor, so that `pipeline(model=save_directory)` rebuilds this pipeline."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
