"""ConvLLaVA for Hugging Face transformers. Importing this package registers it with the Auto classes."""

from .auto_registration import register
from .configuration_conv_llava import ConvLlavaConfig
from .modeling_conv_llava import (
    ConvLlavaForConditionalGeneration,
    ConvLlavaModel,
    ConvLlavaPreTrainedModel,
    ConvLlavaVisionModel,
)

register()

__all__ = [
    "ConvLlavaConfig",
    "ConvLlavaForConditionalGeneration",
    "ConvLlavaModel",
    "ConvLlavaPreTrainedModel",
    "ConvLlavaVisionModel",
]
