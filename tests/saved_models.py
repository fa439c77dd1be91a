"""Tiny models saved with their processor, as the training commands leave them; shared by several test files."""

from __future__ import annotations

from pathlib import Path

import torch

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtForPreTraining, PemtProcessor


def save_tiny(directory: Path, model_class: type = PemtForAudioVisualClassification, labels: dict[int, str] | None = None) -> str:
    """Saves a seeded tiny `model_class` (a classifier over `labels`, or a pretraining model) and its processor."""
    torch.manual_seed(0)
    label_fields = {} if labels is None else {
        "num_labels": len(labels), "id2label": labels, "label2id": {v: k for k, v in labels.items()}
    }
    config = PemtConfig.from_preset("tiny", **label_fields)
    model_class(config).save_pretrained(directory)
    PemtProcessor.from_model_config(config).save_pretrained(directory)
    return str(directory)


def save_tiny_pretrained(directory: Path) -> str:
    return save_tiny(directory, PemtForPreTraining)
