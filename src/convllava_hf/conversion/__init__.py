"""Converters from the original ConvLLaVA checkpoints and from LAION's CLIP ConvNeXt to this package's format."""

from .convert_convllava import convert_checkpoint
from .errors import ConversionError

__all__ = ["ConversionError", "convert_checkpoint"]
