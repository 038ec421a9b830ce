"""Registration of the ConvLLaVA classes with transformers' Auto classes."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_conv_llava import ConvLlavaConfig
from .image_processing_conv_llava import ConvLlavaImageProcessor
from .modeling_conv_llava import ConvLlavaForConditionalGeneration, ConvLlavaModel
from .processing_conv_llava import ConvLlavaProcessor


def register() -> None:
    """
    Make the Auto classes resolve `model_type="conv_llava"` to this package's classes (idempotent). Saved processors
    name their classes (`image_processor_type`, `processor_class`), so folders holding only processor files load too.
    """
    AutoConfig.register(ConvLlavaConfig.model_type, ConvLlavaConfig, exist_ok=True)
    AutoModel.register(ConvLlavaConfig, ConvLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(ConvLlavaConfig, ConvLlavaForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(
        ConvLlavaConfig, image_processor_classes={"pil": ConvLlavaImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(ConvLlavaConfig, ConvLlavaProcessor, exist_ok=True)
