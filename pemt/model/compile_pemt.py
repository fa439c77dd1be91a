"""`torch.compile` for the parts of a PEMT model where it pays, in place.

The whole model is not compiled: `run_cnn_over_segments` selects the real segments by the mask (a shape that depends
on the mask's values), the classifier's heads index by masks too, and a compiled whole would break its graph or
recompile at each new mask. The parts compiled here have static, data-independent graphs: the visual CNN, the audio
CNN (called once per chunk of real segments; the chunk's batch size becomes a symbolic size after its first change)
and the Transformer encoder (one graph per modality index).

`nn.Module.compile` compiles a module's `__call__` in place, so parameter names, state-dict keys, `save_pretrained`
and optimisers that already hold the parameters are untouched; compiled code reads the parameters at every call,
so loading or training new weights needs no recompilation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

# Names of the parts that can be compiled, as attributes of the PEMT backbone.
COMPILABLE_PARTS = ("visual_cnn", "audio_cnn", "encoder")
# The CNNs are ~99% of PEMT's FLOPs; the encoder is compiled too only on request (see README "Performance").
DEFAULT_PARTS = ("visual_cnn", "audio_cnn")


def _backbone(model: nn.Module) -> nn.Module:
    """The `PemtModel` inside a PEMT head model (or the model itself)."""
    for candidate in (model, getattr(model, "pemt", None)):
        if candidate is not None and all(isinstance(getattr(candidate, p, None), nn.Module) for p in COMPILABLE_PARTS):
            return candidate
    raise TypeError(
        f"compile_pemt needs a PEMT model (PemtModel or a model with a `pemt` backbone); got {type(model).__name__}."
    )


def compile_pemt(
    model: nn.Module, parts: Iterable[str] = DEFAULT_PARTS, **compile_kwargs: Any
) -> list[str]:
    r"""
    Compiles parts of a PEMT model in place with `torch.compile`.

    Args:
        model (`nn.Module`):
            A [`PemtModel`] or any PEMT model with a `pemt` backbone (classifier, pretraining model).
        parts (`Iterable[str]`, *optional*, defaults to `("visual_cnn", "audio_cnn")`):
            Which of `"visual_cnn"`, `"audio_cnn"` and `"encoder"` to compile.
        compile_kwargs:
            Passed to `torch.compile` (`backend`, `mode`, `dynamic`, `options`, ...).

    Returns:
        `list[str]`: the names of the modules compiled, as in `model.named_modules()`.

    Example:

    ```python
    >>> model = PemtForAudioVisualClassification.from_pretrained("path/to/finetuned", dtype=torch.bfloat16)
    >>> compile_pemt(model.eval())  # the first call of each new input shape compiles (tens of seconds)
    ['pemt.visual_cnn', 'pemt.audio_cnn']
    ```
    """
    parts = tuple(parts)
    unknown = [p for p in parts if p not in COMPILABLE_PARTS]
    if unknown:
        raise ValueError(f"compile_pemt: unknown part(s) {', '.join(unknown)}; choose from {', '.join(COMPILABLE_PARTS)}.")
    backbone = _backbone(model)
    prefix = "" if backbone is model else "pemt."
    for part in parts:
        getattr(backbone, part).compile(**compile_kwargs)
    return [prefix + part for part in parts]


def is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` was called on this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["compile_pemt", "is_compiled", "COMPILABLE_PARTS", "DEFAULT_PARTS"]
