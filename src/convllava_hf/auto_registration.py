"""Registration of the ConvLLaVA classes with transformers' Auto classes, and for saving them as remote code."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoModelForPreTraining,
    AutoProcessor,
)

from . import image_files, padded_resize
from .configuration_conv_llava import ConvLlavaConfig
from .image_processing_conv_llava import ConvLlavaImageProcessor
from .modeling_conv_llava import ConvLlavaForConditionalGeneration, ConvLlavaModel
from .processing_conv_llava import ConvLlavaProcessor

#: The Auto classes transformers maps LLaVA's conditional-generation model to (`MODEL_AUTO_MAP` mirrors them).
GENERATION_AUTO_CLASSES = (AutoModelForImageTextToText, AutoModelForMultimodalLM, AutoModelForPreTraining)


def register() -> None:
    """
    Make the Auto classes resolve `model_type="conv_llava"` to this package's classes (idempotent), as transformers
    maps LLaVA: `AutoModel` to the base model, the image-text-to-text, multimodal-LM and pretraining classes to the
    generation model. Saved processors name their classes (`image_processor_type`, `processor_class`), so folders
    holding only processor files load too.

    Every class is also registered for its Auto class as remote code (`register_for_auto_class`): `save_pretrained`
    then copies its module files into the folder and writes `auto_map`, so the folder loads with
    `trust_remote_code=True` where this package is not installed. The image processor gets the package's image-file
    checks and thin-image resizing, which its copied module does without.
    """
    ConvLlavaImageProcessor.image_files, ConvLlavaImageProcessor.padded_resize = image_files, padded_resize
    AutoConfig.register(ConvLlavaConfig.model_type, ConvLlavaConfig, exist_ok=True)
    AutoModel.register(ConvLlavaConfig, ConvLlavaModel, exist_ok=True)
    for auto_class in GENERATION_AUTO_CLASSES:
        auto_class.register(ConvLlavaConfig, ConvLlavaForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(
        ConvLlavaConfig, image_processor_classes={"pil": ConvLlavaImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(ConvLlavaConfig, ConvLlavaProcessor, exist_ok=True)

    ConvLlavaConfig.register_for_auto_class("AutoConfig")
    ConvLlavaModel.register_for_auto_class("AutoModel")
    ConvLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    ConvLlavaImageProcessor.register_for_auto_class("AutoImageProcessor")
    ConvLlavaProcessor.register_for_auto_class("AutoProcessor")
