"""Checks that loaded weights fit the model built from the config, run by `PemtPreTrainedModel.from_pretrained`.

`transformers` reports missing and unexpected weights as a warning and initialises what is missing at random. For
the backbone that is always a mistake: a config whose sharing settings differ from the weights' (`share_layers`,
`share_modalities`, `low_rank_dim`) builds a model whose missing layers are random, which gives NaN or plausible
but meaningless outputs. Heads are different: fine-tuning loads a pretrained backbone under fresh heads on purpose,
so missing head weights are recorded on the model (`newly_initialized_heads`) for inference code to refuse.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["check_loaded_weights", "require_trained_heads"]


def _is_backbone_key(model: nn.Module, key: str) -> bool:
    base = getattr(model, model.base_model_prefix, model)
    if base is not model:
        return key.startswith(model.base_model_prefix + ".")
    return key.split(".", 1)[0] in dict(model.named_children())


def _examples(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def check_loaded_weights(model: nn.Module, info: dict[str, Any], source: str, strict: bool = True) -> None:
    """Raises `ValueError` (with `strict`) when backbone weights are missing from, or left over in, the checkpoint
    at `source`; records head weights that were initialised afresh as `model.newly_initialized_heads`."""
    missing = list(info.get("missing_keys", []))
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys", [])]
    missing_backbone = sorted(k for k in missing if _is_backbone_key(model, k))
    unexpected_backbone = sorted(k for k in unexpected if _is_backbone_key(model, k))
    if strict and (missing_backbone or unexpected_backbone):
        config = model.config
        problems = []
        if missing_backbone:
            problems.append(f"{len(missing_backbone)} backbone weight(s) the config needs are missing ({_examples(missing_backbone)})")
        if unexpected_backbone:
            problems.append(f"{len(unexpected_backbone)} weight(s) in the checkpoint have no place in the model ({_examples(unexpected_backbone)})")
        raise ValueError(
            f"{source}: the weights do not fit the config: {'; '.join(problems)}. The config says share_layers="
            f"{config.share_layers}, share_modalities={config.share_modalities}, low_rank_dim={config.low_rank_dim}, "
            f"num_hidden_layers={config.num_hidden_layers}; load the checkpoint with the settings it was trained with "
            "(do not override them)."
        )
    model.newly_initialized_heads = sorted(
        {k for k in missing if not _is_backbone_key(model, k)} | {k for k in mismatched if not _is_backbone_key(model, k)}
    )


def require_trained_heads(model: nn.Module) -> None:
    """Raises `ValueError` when `model` was loaded with heads initialised at random (a pretraining checkpoint or a
    backbone used for classification)."""
    fresh = getattr(model, "newly_initialized_heads", [])
    if fresh:
        raise ValueError(
            f"{getattr(model, 'name_or_path', '') or 'the model'}: its classification head is not trained ({len(fresh)} "
            f"head weight(s) were initialised at random, e.g. {fresh[0]}): this is a pretraining checkpoint or a "
            "backbone. Fine-tune it first (pemt finetune --model_name_or_path ...)."
        )
