"""Converters of other implementations' checkpoints into pemt model directories."""

from .avbert import AvbertConversionError, ConversionResult, convert_avbert_checkpoint

__all__ = ["AvbertConversionError", "ConversionResult", "convert_avbert_checkpoint"]
