"""The starting point of stage 1: a pretrained causal LM, a five-stage ConvNeXt tower and a new, random projector."""

import os

import torch
from transformers import AutoModelForCausalLM, ConvNextModel
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from ..configuration_conv_llava import ConvLlavaConfig
from ..conversion.processor_building import processor_from_original
from ..processing_conv_llava import ConvLlavaProcessor
from ..embedding_padding import EMBEDDING_MULTIPLE, pad_rows_with_mean
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration


def assemble_conv_llava(
    language_model: str | os.PathLike,
    vision_tower: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """
    A fresh ConvLLaVA as the original stage 1 builds it: the language model's weights (its embeddings grown by the
    `<image>` token), the vision tower's weights and a default-initialised `mlp2x_gelu` projector.

    Args:
        language_model: folder or Hub id of a Llama-family causal LM with a sentencepiece tokenizer (Vicuna-7B-v1.5).
        vision_tower: a five-stage ConvNeXt folder (e.g. written by `convert_laion_convnext`) with a
            `preprocessor_config.json` whose `crop_size` is the training resolution.
        dtype: dtype of the loaded weights (`"auto"` keeps the checkpoints').
        attn_implementation: attention of the language model (`sdpa` by default).

    Returns:
        The model and its processor (tokenizer + `<image>`, "pad" image processor at the tower's resolution).
    """
    processor = processor_from_original(language_model, vision_tower)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    llm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype, attn_implementation=attn_implementation)
    original_rows = llm.get_input_embeddings().weight.shape[0]
    llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE, mean_resizing=False)
    with torch.no_grad():  # new rows = the mean row, like the converter
        for embedding in {llm.get_input_embeddings().weight, llm.get_output_embeddings().weight}:
            embedding.copy_(pad_rows_with_mean(embedding[:original_rows], embedding.shape[0]))
    tower = ConvNextModel.from_pretrained(vision_tower, dtype=dtype)
    config = ConvLlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=processor.image_token_id,
        image_resolution=processor.image_processor.resolution,
    )
    with torch.device("meta"):
        model = ConvLlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(llm.dtype)
    model.generation_config = llm.generation_config
    if meta := [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]:
        raise RuntimeError(f"Parameters left uninitialised while assembling ConvLLaVA: {meta}.")
    return model, processor
