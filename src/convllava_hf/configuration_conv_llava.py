"""Configuration of ConvLLaVA: LLaVA's, with a five-stage ConvNeXt tower, Vicuna-7B defaults and a resolution."""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

CONVLLAVA_CODE_VERSION = 1  # of the remote-code modules, saved in configs; older modules refuse a newer folder
#: The Auto classes of a folder holding `modeling_conv_llava.py` (its `auto_map`), mapped as LLaVA is.
MODEL_AUTO_MAP = {"AutoModel": "modeling_conv_llava.ConvLlavaModel"} | dict.fromkeys(
    ("AutoModelForImageTextToText", "AutoModelForMultimodalLM", "AutoModelForPreTraining"),
    "modeling_conv_llava.ConvLlavaForConditionalGeneration",
)
#: Total stride of the five-stage ConvNeXt (stem 4, four stride-2 downsamplings): one visual token per 64x64 pixels.
VISION_STRIDE = 64
STOCK_MODEL_TYPE, STASH_KEY = "fast_vlm", "convllava_layout"  # a stock config keeps image_resolution under STASH_KEY
#: The LAION CLIP ConvNeXt-Large trunk (stages 1-4) plus ConvLLaVA's trained fifth stage.
CONVNEXT_LARGE_5_STAGE = dict(num_stages=5, depths=[3, 3, 27, 3, 6], hidden_sizes=[192, 384, 768, 1536, 3072])
CONVNEXT_LARGE_5_STAGE.update(patch_size=4, hidden_act="gelu", image_size=1536)
#: Vicuna-7B-v1.5 (Llama-2-7B shape), with the vocabulary grown by `<image>` and padded to a multiple of 64.
VICUNA_7B = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, pad_token_id=0)
VICUNA_7B.update(num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def visual_token_grid(height: int, width: int, stride: int = VISION_STRIDE) -> tuple[int, int]:
    """(rows, cols) of the visual tokens over `height` x `width` pixels of image content: one per `stride` pixels."""
    return height // stride, width // stride


def num_visual_tokens(height: int, width: int, stride: int = VISION_STRIDE) -> int:
    """Visual tokens the model spends on `height` x `width` pixels of image content."""
    return math.prod(visual_token_grid(height, width, stride))


def check_resolution(resolution: object, name: str = "resolution", error: type[ValueError] = ValueError) -> None:
    """Raise `error` naming `name` unless `resolution` is a positive multiple of `VISION_STRIDE` (an int)."""
    if not isinstance(resolution, int) or resolution <= 0 or resolution % VISION_STRIDE:
        raise error(f"{name} must be a positive multiple of {VISION_STRIDE}, got {resolution!r}.")


@strict
class ConvLlavaConfig(LlavaConfig):
    r"""
    A [`LlavaConfig`] whose defaults are the released ConvLLaVA-7B's (ConvNeXt-Large + fifth stage, Vicuna-7B-v1.5)
    at 1536x1536 pixels, 576 visual tokens (`ConvLlavaConfig(image_resolution=768).image_seq_length` is 144). It adds
    `image_resolution`, the square side the model was trained on (a multiple of 64), and `convllava_code_version`;
    `image_seq_length` is derived from them, `vision_feature_layer` indexes (stem, stage 1, ..., stage 5), and
    `vision_config.hidden_size` is that output's width, which LLaVA's projector reads. A stock `fast_vlm` config
    written by `convllava-convert` loads too.
    """

    model_type = "conv_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="convnext", init_kwargs=CONVNEXT_LARGE_5_STAGE
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=VICUNA_7B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 32000
    image_resolution: int = 1536
    image_seq_length: int | None = None
    vision_feature_select_strategy: Literal["full"] = "full"
    vision_feature_layer: int = -1
    tie_word_embeddings: bool = False
    convllava_code_version: int = CONVLLAVA_CODE_VERSION

    def __post_init__(self, **kwargs):
        if self.convllava_code_version > CONVLLAVA_CODE_VERSION:
            raise ValueError(
                f"This ConvLLaVA config was written by ConvLLaVA code version {self.convllava_code_version}, newer "
                f"than the code loading it ({__file__}, version {CONVLLAVA_CODE_VERSION}). Package: upgrade it; "
                "with trust_remote_code=True, the folder's *.py modules are stale: re-run `convllava-add-remote-code "
                "FOLDER` with the convllava-hf that wrote it and upload the *.py files with the config."
            )
        self.convllava_code_version = CONVLLAVA_CODE_VERSION
        super().__post_init__(**kwargs)
        outputs, layer = self.vision_config.num_stages + 1, self.vision_feature_layer
        if not isinstance(layer, int) or not -outputs <= layer < outputs:
            raise ValueError(
                f"vision_feature_layer must be one int in [{-outputs}, {outputs - 1}] (stem, then each of the "
                f"{outputs - 1} ConvNeXt stages), got {layer!r}."
            )
        if getattr(self.vision_config, "hidden_size", None) is None:
            self.vision_config.hidden_size = self.vision_feature_size
        check_resolution(self.image_resolution, "image_resolution")
        side, vision = self.image_resolution, self.vision_config
        expected = num_visual_tokens(side, side, self.vision_stride)
        self.image_seq_length = expected if self.image_seq_length is None else self.image_seq_length
        if vision.hidden_size != self.vision_feature_size:
            raise ValueError(
                f"vision_config.hidden_size={vision.hidden_size!r} is not the width of the ConvNeXt output the "
                f"projector reads ({self.vision_feature_size}, vision_config.hidden_sizes at vision_feature_layer)."
            )
        if self.image_seq_length != expected:
            raise ValueError(
                f"image_seq_length={self.image_seq_length!r} does not match a {side}x{side} image, which gives "
                f"{expected} tokens at the ConvNeXt's stride of {self.vision_stride} pixels (vision_config.patch_size="
                f"{vision.patch_size}, num_stages={vision.num_stages}; ConvLLaVA's is 4 x 2^4 = {VISION_STRIDE})."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """As transformers reads it; a stock `fast_vlm` folder's is translated, other model types refused."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == STOCK_MODEL_TYPE and (config_dict.get("vision_config") or {}).get("model_type") == "convnext":
            resolution = math.isqrt(config_dict.get("image_seq_length") or 0) * VISION_STRIDE
            resolution = (config_dict.get(STASH_KEY) or {}).get("image_resolution", resolution)
            dropped = (STASH_KEY, "architectures", "attn_implementation", "model_type")
            config_dict = {**{k: v for k, v in config_dict.items() if k not in dropped}, "image_resolution": resolution}
        elif model_type not in (None, cls.model_type):
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a model of type {model_type!r}, not a ConvLLaVA checkpoint "
                f"({cls.model_type!r}, or {STOCK_MODEL_TYPE!r} with a ConvNeXt tower, as convllava-convert writes)."
            )
        return config_dict, kwargs

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """As transformers saves; a config saved with remote code maps every class of `MODEL_AUTO_MAP` in `auto_map`."""
        auto_map = getattr(self, "auto_map", None) or {}
        if any(str(reference).startswith("modeling_conv_llava.") for reference in auto_map.values()):
            self.auto_map = {**auto_map, **MODEL_AUTO_MAP}
        super().save_pretrained(save_directory, push_to_hub, **kwargs)

    @property
    def vision_feature_size(self) -> int:
        """Channel width of the ConvNeXt output selected by `vision_feature_layer`."""
        return [self.vision_config.hidden_sizes[0], *self.vision_config.hidden_sizes][self.vision_feature_layer]

    @property
    def vision_stride(self) -> int:
        """Pixels per visual token along each side at `vision_feature_layer`."""
        stages_used = range(self.vision_config.num_stages + 1)[self.vision_feature_layer]
        return self.vision_config.patch_size * 2 ** max(stages_used - 1, 0)


__all__ = ["ConvLlavaConfig"]
