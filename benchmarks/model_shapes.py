"""
The architectures compared by the benchmarks, as transformers configs: ConvLLaVA-768/1024/1536, a LLaVA-1.5-shaped
model (CLIP ViT-L/14 at 336 px, 576 visual tokens) and a LLaVA-NeXT-shaped one (the same ViT on 672x672 "anyres":
one 336 px overview plus four 336 px crops), all on the same Vicuna-7B-shaped Llama. `tiny=True` shrinks widths,
depths and the ViT's input side (56 px) so that everything runs on a CPU in seconds.
"""

import torch
from transformers import LlavaConfig, LlavaNextConfig

from convllava_hf import ConvLlavaConfig
from convllava_hf.configuration_conv_llava import VICUNA_7B

CONVLLAVA_RESOLUTIONS = (768, 1024, 1536)
QUESTION_TOKENS = 64

#: CLIP ViT-L/14 at 336 px, the vision tower of LLaVA-1.5 and LLaVA-NeXT.
CLIP_VIT_L_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
#: LLaVA-NeXT-7B's anyres grid in units of the ViT's input side; the compared image (672x672) uses the 2x2 one.
ANYRES_GRIDS = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]
LLAVA_NEXT_IMAGE_SIDES = 2

TINY_CONVNEXT = {
    "model_type": "convnext",
    "num_stages": 5,
    "depths": [1, 1, 2, 1, 1],
    "hidden_sizes": [16, 24, 32, 48, 64],
}
TINY_CLIP = {
    **CLIP_VIT_L_336,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,  # 4x4 patches: the CPU smoke test stays fast
}
TINY_LLAMA = {
    **VICUNA_7B,
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
IMAGE_TOKEN_ID = 32000


def text_config(tiny: bool) -> dict:
    return dict(TINY_LLAMA) if tiny else {**VICUNA_7B, "model_type": "llama"}


def convllava_config(resolution: int, tiny: bool = False) -> ConvLlavaConfig:
    """ConvLLaVA-`resolution` (the released ConvNeXt-L + fifth stage, Vicuna-7B)."""
    vision = {"vision_config": dict(TINY_CONVNEXT)} if tiny else {}
    return ConvLlavaConfig(image_resolution=resolution, text_config=text_config(tiny), **vision)


def llava15_config(tiny: bool = False) -> LlavaConfig:
    """LLaVA-1.5-7B's shape: CLIP ViT-L/14-336 penultimate layer without CLS, 2-layer GELU projector."""
    return LlavaConfig(
        vision_config=dict(TINY_CLIP if tiny else CLIP_VIT_L_336),
        text_config=text_config(tiny),
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_next_config(tiny: bool = False) -> LlavaNextConfig:
    """LLaVA-NeXT-7B's shape (anyres with spatial unpadding and one newline token per feature row)."""
    vision = dict(TINY_CLIP if tiny else CLIP_VIT_L_336)
    side = vision["image_size"]
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text_config(tiny),
        image_token_index=IMAGE_TOKEN_ID,
        image_grid_pinpoints=[[rows * side, cols * side] for rows, cols in ANYRES_GRIDS],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def all_configs(tiny: bool = False) -> dict:
    """Every compared model's name -> its config."""
    configs = {f"ConvLLaVA-{r}": convllava_config(r, tiny) for r in CONVLLAVA_RESOLUTIONS}
    configs["LLaVA-1.5 (ViT-L/14-336)"] = llava15_config(tiny)
    configs["LLaVA-NeXT (anyres 672)"] = llava_next_config(tiny)
    return configs


def image_inputs(
    config, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, resolution: int | None = None
) -> dict:
    """
    `pixel_values` (and `image_sizes` for LLaVA-NeXT) of one square image at the model's resolution, or for ConvLLaVA
    at `resolution` (any multiple of 64).
    """
    if isinstance(config, ConvLlavaConfig):
        side = resolution or config.image_resolution
        return {"pixel_values": torch.randn(1, 3, side, side, device=device, dtype=dtype)}
    side = config.vision_config.image_size
    if isinstance(config, LlavaNextConfig):
        crops = 1 + LLAVA_NEXT_IMAGE_SIDES**2  # an overview plus the 2x2 grid
        image_side = LLAVA_NEXT_IMAGE_SIDES * side
        return {
            "pixel_values": torch.randn(1, crops, 3, side, side, device=device, dtype=dtype),
            # sizes are read on the host, so they stay real tensors when the model lives on the meta device
            "image_sizes": torch.tensor([[image_side] * 2], device="cpu" if str(device) == "meta" else device),
        }
    return {"pixel_values": torch.randn(1, 3, side, side, device=device, dtype=dtype)}
