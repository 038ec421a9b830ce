"""Registration of the ConvLLaVA classes with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_conv_llava import ConvLlavaConfig
from .modeling_conv_llava import ConvLlavaForConditionalGeneration, ConvLlavaModel


def register() -> None:
    """Make `Auto*.from_pretrained` resolve `model_type="conv_llava"` to this package's classes (idempotent)."""
    AutoConfig.register(ConvLlavaConfig.model_type, ConvLlavaConfig, exist_ok=True)
    AutoModel.register(ConvLlavaConfig, ConvLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(ConvLlavaConfig, ConvLlavaForConditionalGeneration, exist_ok=True)
