"""Load a converted ConvLLaVA checkpoint for evaluation, with the settings benchmarks need."""

import os

import torch

from ..image_processing_conv_llava import check_settings
from ..model_loading import CheckpointLoadError, load_model_and_processor
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration
from ..processing_conv_llava import ConvLlavaProcessor

DTYPES = ("auto", "float32", "float16", "bfloat16")


def load_for_evaluation(
    pretrained: str | os.PathLike,
    dtype: str = "auto",
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    image_aspect_ratio: str | None = None,
    resolution: int | None = None,
) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """
    The model (in eval mode) and processor (left padding) of a converted checkpoint folder or Hub id.

    `image_aspect_ratio` and `resolution` override the processor's settings; `load_in_4bit`/`load_in_8bit` quantize
    the language model with bitsandbytes. Raises `ValueError` naming the problem for a missing or non-ConvLLaVA
    checkpoint (with the `convllava-convert` command for an original one) and for contradictory settings.
    """
    check_settings(64 if resolution is None else resolution, image_aspect_ratio or "pad")  # before the slow load
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if load_in_4bit and load_in_8bit:
        raise ValueError("Choose one of load_in_4bit and load_in_8bit, not both.")
    quantization = "4bit" if load_in_4bit else "8bit" if load_in_8bit else None
    try:
        model, processor = load_model_and_processor(
            pretrained,
            dtype=dtype,
            device_map=device_map,
            quantization=quantization,
            compute_dtype=torch.bfloat16,
            attn_implementation=attn_implementation,
            name="pretrained",
        )
    except CheckpointLoadError as error:
        raise ValueError(
            f"No ConvLLaVA checkpoint could be loaded from {str(pretrained)!r} ({error}). "
            "Give a folder written by convllava-convert, or the Hub id of one."
        ) from error
    processor.tokenizer.padding_side = "left"
    if resolution is not None:
        processor.image_processor.resolution = resolution
    if image_aspect_ratio is not None:
        processor.image_processor.image_aspect_ratio = image_aspect_ratio
    return model, processor
