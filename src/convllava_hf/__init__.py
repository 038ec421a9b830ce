"""ConvLLaVA for Hugging Face transformers. Importing this package registers it with the Auto classes."""

from .auto_registration import register
from .configuration_conv_llava import ConvLlavaConfig
from .image_processing_conv_llava import ConvLlavaImageProcessor
from .modeling_conv_llava import (
    ConvLlavaForConditionalGeneration,
    ConvLlavaModel,
    ConvLlavaPreTrainedModel,
    ConvLlavaVisionModel,
)
from .processing_conv_llava import ConvLlavaProcessor

register()

__all__ = [
    "ConvLlavaConfig",
    "ConvLlavaForConditionalGeneration",
    "ConvLlavaImageProcessor",
    "ConvLlavaModel",
    "ConvLlavaPreTrainedModel",
    "ConvLlavaProcessor",
    "ConvLlavaVisionModel",
]
