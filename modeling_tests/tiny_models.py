"""Tiny ConvLLaVA configurations and models for fast CPU tests (shapes of the original-tiny fixture)."""

from pathlib import Path

import torch

from convllava_hf import ConvLlavaConfig, ConvLlavaForConditionalGeneration

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "original-tiny"

TINY_IMAGE_TOKEN_ID = 800
TINY_RESOLUTION = 256  # 4x4 = 16 visual tokens

TINY_VISION = {
    "model_type": "convnext",
    "num_stages": 5,
    "depths": [1, 1, 2, 1, 1],
    "hidden_sizes": [16, 24, 32, 48, 64],
}
TINY_TEXT = {
    "model_type": "llama",
    "vocab_size": 832,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def tiny_config(**overrides) -> ConvLlavaConfig:
    """A ConvLlavaConfig with the fixture's tiny shapes; keyword arguments override top-level fields."""
    kwargs = {
        "vision_config": dict(TINY_VISION),
        "text_config": dict(TINY_TEXT),
        "image_token_index": TINY_IMAGE_TOKEN_ID,
        "image_resolution": TINY_RESOLUTION,
    }
    kwargs.update(overrides)
    return ConvLlavaConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> ConvLlavaForConditionalGeneration:
    """A randomly initialised tiny ConvLLaVA in eval mode, with layer scales large enough that every block matters."""
    torch.manual_seed(seed)
    model = ConvLlavaForConditionalGeneration(tiny_config(**overrides))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("layer_scale_parameter"):
                parameter.uniform_(0.3, 1.0)
    return model.eval()
