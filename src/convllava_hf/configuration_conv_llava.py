"""Configuration of ConvLLaVA: a five-stage ConvNeXt vision tower, a 2-layer GELU projector and a causal LM."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .stock_layout import STOCK_MODEL_TYPE, from_stock_config

#: Version of this package's remote-code modules, written into every saved config as `convllava_code_version`. Bump it
#: when a saved folder needs module files newer than those of earlier versions: older modules then refuse it.
CONVLLAVA_CODE_VERSION = 1

#: The model Auto classes of a folder holding `modeling_conv_llava.py` (transformers' `auto_map`), mapped as LLaVA is.
MODEL_AUTO_MAP = {
    "AutoModel": "modeling_conv_llava.ConvLlavaModel",
    "AutoModelForImageTextToText": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
    "AutoModelForPreTraining": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
}

#: Total stride of the five-stage ConvNeXt (stem 4, four stride-2 downsamplings): one visual token per 64x64 pixels.
VISION_STRIDE = 64


def visual_token_grid(height: int, width: int, stride: int = VISION_STRIDE) -> tuple[int, int]:
    """(rows, cols) of the visual tokens over `height` x `width` pixels of image content: one per `stride` pixels."""
    return height // stride, width // stride


def num_visual_tokens(height: int, width: int, stride: int = VISION_STRIDE) -> int:
    """Visual tokens the model spends on `height` x `width` pixels of image content (its content size on the canvas)."""
    rows, cols = visual_token_grid(height, width, stride)
    return rows * cols


def check_resolution(resolution: object, name: str = "resolution", error: type[ValueError] = ValueError) -> None:
    """Raise `error` naming `name` unless `resolution` is a positive multiple of `VISION_STRIDE` (an int)."""
    if not isinstance(resolution, int) or resolution <= 0 or resolution % VISION_STRIDE:
        raise error(f"{name} must be a positive multiple of {VISION_STRIDE}, got {resolution!r}.")


#: The LAION CLIP ConvNeXt-Large trunk (stages 1-4) plus ConvLLaVA's trained fifth stage.
CONVNEXT_LARGE_5_STAGE = {
    "num_stages": 5,
    "depths": [3, 3, 27, 3, 6],
    "hidden_sizes": [192, 384, 768, 1536, 3072],
    "patch_size": 4,
    "hidden_act": "gelu",
    "image_size": 1536,
}

#: Vicuna-7B-v1.5 (Llama-2-7B shape), with the vocabulary grown by `<image>` and padded to a multiple of 64.
VICUNA_7B = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 0,
}


@strict
class ConvLlavaConfig(LlavaConfig):
    r"""
    Configuration of a [`ConvLlavaForConditionalGeneration`]. Defaults reproduce the released ConvLLaVA-7B models
    (ConvNeXt-Large + fifth stage, Vicuna-7B-v1.5) at 1536x1536 pixels, i.e. 24x24 = 576 visual tokens.

    Args:
        vision_config (`ConvNextConfig` or `dict`, *optional*):
            The five-stage ConvNeXt vision tower. Its final pooling LayerNorm is never built or used.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Any causal LM config that `AutoModel.from_config` builds. Defaults to a Vicuna-7B-v1.5 shaped Llama.
        image_token_index (`int`, *optional*, defaults to 32000):
            Id of the `<image>` placeholder token (also readable as `image_token_id`).
        image_resolution (`int`, *optional*, defaults to 1536):
            Side of the square the released models were trained on (768, 1024 or 1536); a multiple of 64.
        image_seq_length (`int`, *optional*):
            Visual tokens of a square `image_resolution` image; derived as `(image_resolution // vision_stride) ** 2`,
            i.e. `(image_resolution // 64) ** 2` for the last stage.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the two projector layers (exact erf GELU, the original's `mlp2x_gelu`).
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Which ConvNeXt output feeds the projector: index into (stem, stage 1, ..., stage 5); -1 is the last stage.
            [`ConvLlavaProcessor`] expands `<image>` for the last stage (one token per 64x64 pixels); an earlier stage
            gives more tokens per image, so its prompts need that many image tokens.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"full"`):
            Only `"full"`: a ConvNeXt has no CLS token to drop.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases.
        convllava_code_version (`int`, *optional*):
            Version of the ConvLLaVA code that wrote the config (`CONVLLAVA_CODE_VERSION`); a config written by newer
            code than this module is refused. Always the current version once loaded, so saving records it.

    Example:

    ```python
    >>> from convllava_hf import ConvLlavaConfig, ConvLlavaForConditionalGeneration
    >>> config = ConvLlavaConfig.for_resolution(768)  # ConvLLaVA-768: 12x12 = 144 visual tokens
    >>> config.image_seq_length
    144
    ```
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
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: Literal["full"] = "full"
    vision_feature_layer: int = -1
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False
    convllava_code_version: int = CONVLLAVA_CODE_VERSION

    def __post_init__(self, **kwargs):
        if self.convllava_code_version > CONVLLAVA_CODE_VERSION:
            raise ValueError(
                f"This ConvLLaVA config was written by ConvLLaVA code version {self.convllava_code_version}, newer "
                f"than the code loading it ({__file__}, version {CONVLLAVA_CODE_VERSION}). With the convllava-hf "
                "package: upgrade it (pip install -U convllava-hf). With trust_remote_code=True: the folder's *.py "
                "modules are stale; re-run `convllava-add-remote-code FOLDER` with the convllava-hf that wrote it "
                "and upload the *.py files with the config."
            )
        self.convllava_code_version = CONVLLAVA_CODE_VERSION
        super().__post_init__(**kwargs)
        if self.image_seq_length is None:
            self.validate_architecture()  # the derivation needs a valid vision_feature_layer
            self.image_seq_length = num_visual_tokens(self.image_resolution, self.image_resolution, self.vision_stride)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """
        The config dict as transformers reads it; a stock `fast_vlm` folder's (`convllava-convert --layout fast_vlm`)
        is translated, so the package's classes load both layouts. Raises naming a field that does not describe
        ConvLLaVA's geometry.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == STOCK_MODEL_TYPE:
            config_dict = from_stock_config(config_dict, f"{pretrained_model_name_or_path}/config.json")
        elif model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a model of type {model_type!r}, not a ConvLLaVA checkpoint "
                f"({cls.model_type!r}, or {STOCK_MODEL_TYPE!r} with a ConvNeXt tower, as convllava-convert writes)."
            )
        return config_dict, kwargs

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """
        Save as transformers does. When `auto_map` already maps one Auto class to `modeling_conv_llava.py` (a model
        saved with its remote code), every class of `MODEL_AUTO_MAP` is mapped, so the folder loads with each of them.
        """
        auto_map = getattr(self, "auto_map", None) or {}
        if any(str(reference).startswith("modeling_conv_llava.") for reference in auto_map.values()):
            self.auto_map = {**auto_map, **MODEL_AUTO_MAP}
        super().save_pretrained(save_directory, push_to_hub, **kwargs)

    @classmethod
    def for_resolution(cls, resolution: int, **kwargs) -> "ConvLlavaConfig":
        """The ConvLLaVA-768 / -1024 / -1536 variant (any multiple of 64), other fields as given or default."""
        return cls(image_resolution=resolution, **kwargs)

    @property
    def vision_feature_size(self) -> int:
        """Channel width of the ConvNeXt output selected by `vision_feature_layer`."""
        widths = [self.vision_config.hidden_sizes[0], *self.vision_config.hidden_sizes]
        return widths[self.vision_feature_layer]

    @property
    def vision_stride(self) -> int:
        """Pixels per visual token along each side at `vision_feature_layer`."""
        stages_used = range(self.vision_config.num_stages + 1)[self.vision_feature_layer]
        return self.vision_config.patch_size * 2 ** max(stages_used - 1, 0)

    def validate_architecture(self):
        """Part of `@strict` validation: the settings a ConvNeXt tower can honour."""
        check_resolution(self.image_resolution, "image_resolution")
        num_outputs = self.vision_config.num_stages + 1
        if (
            not isinstance(self.vision_feature_layer, int)
            or not -num_outputs <= self.vision_feature_layer < num_outputs
        ):
            raise ValueError(
                f"vision_feature_layer must be one int in [{-num_outputs}, {num_outputs - 1}] (stem, then each of the "
                f"{num_outputs - 1} ConvNeXt stages), got {self.vision_feature_layer!r}."
            )


__all__ = ["ConvLlavaConfig"]
