"""The converted checkpoint's processor and generation config, from the original LLM and vision folders."""

import json
import logging
import os
from pathlib import Path

from transformers import GenerationConfig, LlamaTokenizer

from ..chat_template import VICUNA_V1_CHAT_TEMPLATE
from ..image_processing_conv_llava import ConvLlavaImageProcessor
from ..processing_conv_llava import ConvLlavaProcessor
from ..whole_prompt_tokenizer import original_exact_tokenizer
from .errors import ConversionError

logger = logging.getLogger(__name__)


def processor_from_original(
    llm_dir: str | os.PathLike, vision_dir: str | os.PathLike, **image_processor_kwargs
) -> ConvLlavaProcessor:
    """
    The processor of an original ConvLLaVA checkpoint: the sentencepiece tokenizer of its LLM folder plus `<image>`,
    as its whole-prompt copy that gives the original's ids ([`original_exact_tokenizer`]), with left padding; the
    resolution of its vision-tower folder's `preprocessor_config.json` (`crop_size` as a dict or an int); the Vicuna
    v1 chat template.
    """
    tokenizer = LlamaTokenizer.from_pretrained(llm_dir, padding_side="left")
    tokenizer = original_exact_tokenizer(tokenizer) or tokenizer
    if "resolution" not in image_processor_kwargs:
        crop = json.loads((Path(vision_dir) / "preprocessor_config.json").read_text())["crop_size"]
        image_processor_kwargs["resolution"] = crop["height"] if isinstance(crop, dict) else crop
    image_processor = ConvLlavaImageProcessor(**image_processor_kwargs)
    return ConvLlavaProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_CHAT_TEMPLATE)


def build_processor(
    llm_dir: Path, vision_dir: Path, image_processor_kwargs: dict, original_vocab_size: int
) -> ConvLlavaProcessor:
    """
    The original sentencepiece tokenizer plus `<image>` (id `original_vocab_size`), as its whole-prompt copy that
    vLLM and the processor use (`original_exact_tokenizer`), and an image processor that reproduces the original
    preprocessing with `image_processor_kwargs` (see `image_processor_settings`).
    """
    try:
        processor = processor_from_original(llm_dir, vision_dir, **image_processor_kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"Cannot build the processor from {llm_dir} and {vision_dir}: {error}") from error
    if processor.image_token_id != original_vocab_size:
        raise ConversionError(
            f"The tokenizer in {llm_dir} has {processor.image_token_id} tokens but the LLM has {original_vocab_size} "
            f"embedding rows; they must match so that <image> gets the id right after the vocabulary."
        )
    tokenizer = processor.tokenizer
    if tokenizer.backend_tokenizer.normalizer is None:  # the processor did not make its whole-prompt copy
        logger.warning(
            "The tokenizer in %s is not a legacy-free sentencepiece Llama tokenizer (%s); it is kept as it is, and its "
            "ids next to <image> may differ from the original's, which gave the text after an image its own dummy "
            "prefix.",
            llm_dir,
            type(tokenizer).__name__,
        )
    return processor


def build_generation_config(llm_dir: Path, processor: ConvLlavaProcessor) -> GenerationConfig:
    """
    The original `generation_config.json` (if any) with the tokenizer's BOS, EOS and pad ids. Its `max_length` (the
    context size, 4096 for Vicuna) is dropped: kept, it would make every `generate(max_new_tokens=...)` warn.
    """
    path = llm_dir / "generation_config.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("transformers_version", "max_length"):
        settings.pop(key, None)
    tokenizer = processor.tokenizer
    settings.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    try:
        generation_config = GenerationConfig(**settings)
        generation_config.validate(strict=True)
    except ValueError as error:
        raise ConversionError(f"The original {path.name} is not a valid generation config: {error}") from error
    return generation_config
