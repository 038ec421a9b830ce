"""ConvLLaVA for Hugging Face transformers. Importing this package registers it with the Auto classes."""

from .torchvision_check import check_torchvision_loads

check_torchvision_loads()  # before transformers' image classes, whose own message would hide the cause

from .auto_registration import register  # noqa: E402
from .configuration_conv_llava import ConvLlavaConfig  # noqa: E402
from .image_processing_conv_llava import ConvLlavaImageProcessor  # noqa: E402
from .modeling_conv_llava import (  # noqa: E402
    ConvLlavaForConditionalGeneration,
    ConvLlavaModel,
    ConvLlavaPreTrainedModel,
)
from .processing_conv_llava import ConvLlavaProcessor  # noqa: E402

register()

__all__ = [
    "ConvLlavaConfig",
    "ConvLlavaForConditionalGeneration",
    "ConvLlavaImageProcessor",
    "ConvLlavaModel",
    "ConvLlavaPreTrainedModel",
    "ConvLlavaProcessor",
]
