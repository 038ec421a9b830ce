"""The one loader of the package's tools (chat, web demo, evaluation, training): a checkpoint and its processor."""

import os

import torch
from huggingface_hub.errors import HFValidationError
from transformers import BitsAndBytesConfig

from .checkpoint_source import check_converted, load_failure
from .modeling_conv_llava import ConvLlavaForConditionalGeneration
from .processing_conv_llava import ConvLlavaProcessor

QUANTIZATIONS = ("4bit", "8bit")


class CheckpointLoadError(ValueError):
    """A checkpoint that could not be read; the message is the error, saying first when it was tried as a Hub id."""


def quantization_config(
    quantization: str | None, compute_dtype: torch.dtype | None = None, for_training: bool = False
) -> BitsAndBytesConfig | None:
    """
    bitsandbytes settings for `quantization` ("4bit", "8bit" or None), 4-bit computing in `compute_dtype` (bitsandbytes'
    default float32 when None) and, `for_training`, QLoRA's NF4 with double quantization. The model's own default
    keeps the vision tower and projector unquantized.
    """
    if quantization is None:
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization != "4bit":
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {quantization!r}.")
    qlora = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True} if for_training else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, **qlora)


def load_model_and_processor(
    model_id: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    quantization: str | None = None,
    compute_dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    for_training: bool = False,
    processor_id: str | os.PathLike | None = None,
    name: str = "--model",
) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """
    The model (eval mode, as `from_pretrained` leaves it) and processor of a converted checkpoint folder or Hub id,
    either layout, as the package's classes (so `preserve` mode works on a stock `fast_vlm` folder too).

    `quantization` and `compute_dtype`, `for_training`: see `quantization_config`. `processor_id` loads the processor
    from elsewhere. Raises `UnconvertedCheckpointError` for an original ConvLLaVA folder (`"{name} {model_id!r}: it
    holds ..."`, with the command converting it), and `CheckpointLoadError` when a checkpoint cannot be read (no such
    folder or Hub id, no ConvLLaVA files).
    """
    check_converted(model_id, name)
    quantization_settings = quantization_config(quantization, compute_dtype, for_training)
    processor = _read(ConvLlavaProcessor.from_pretrained, processor_id or model_id)
    model = _read(
        ConvLlavaForConditionalGeneration.from_pretrained,
        model_id,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn_implementation,
        quantization_config=quantization_settings,
    )
    return model, processor


def _read(from_pretrained, source: str | os.PathLike, **kwargs):
    """`from_pretrained(source, **kwargs)`, a missing or unreadable checkpoint raised as `CheckpointLoadError`."""
    try:
        return from_pretrained(source, **kwargs)
    except (OSError, HFValidationError) as error:
        raise CheckpointLoadError(load_failure(source, error)) from error
