"""
ConvLLaVA in transformers' own `fast_vlm` layout: the config and processor settings of a stock folder, translated to
and from this package's `conv_llava` ones.

A stock folder is a `FastVlmForConditionalGeneration` (the ConvNeXt's `last_hidden_state`, flattened, through the
linear-GELU-linear projector) with a `LlavaProcessor` (`patch_size=64`, one token per 64x64 pixels, images padded to a
square). Both layouts hold the same weights under the same names; only these settings differ.
"""

import math

from .configuration_conv_llava import STASH_KEY, STOCK_MODEL_TYPE, VISION_STRIDE
from .processing_conv_llava import LLAVA_SETTINGS

STOCK_ARCHITECTURE = "FastVlmForConditionalGeneration"
STOCK_PROCESSOR_CLASS = "LlavaProcessor"
#: The image processor written into stock folders: LLaVA's PIL backend, whose pixels are the original's.
STOCK_IMAGE_PROCESSOR_TYPE = "LlavaImageProcessorPil"
#: Keys of a conv_llava config that the stock config does not carry (the model's remote code and its version).
PACKAGE_ONLY_CONFIG_KEYS = ("auto_map", "convllava_code_version", "image_resolution")

#: The attention a stock config declares for the FastVLM wrapper itself, which has none: tools that rebuild a model
#: with `config._attn_implementation` (TRL's reference model) then ask for "eager", which the ConvNeXt accepts, where
#: "sdpa" would be refused by `ConvNextModel`. Sub-models still choose their own (SDPA for the language model).
STOCK_ATTENTION = {"": "eager"}

#: The `LlavaProcessor` settings that reproduce the original `pad` pipeline.
STOCK_PROCESSOR_SETTINGS = LLAVA_SETTINGS
#: The image processor settings the original pipeline relies on (pad to a square, resize, centre crop).
STOCK_IMAGE_SETTINGS = {"do_pad": True, "do_resize": True, "do_center_crop": True}
#: Keys of a conv_llava image processor config that a stock one does not carry.
PACKAGE_ONLY_IMAGE_KEYS = ("auto_map", "image_aspect_ratio", "resolution", "image_processor_type")


class StockLayoutError(ValueError):
    """Settings that one layout cannot express or that do not match ConvLLaVA's geometry; the message names them."""


def vision_stride(vision_config: dict) -> int:
    """Pixels per visual token along each side at the last stage of a ConvNeXt config (64 for five stages)."""
    return vision_config.get("patch_size", 4) * 2 ** (vision_config.get("num_stages", 4) - 1)


def to_stock_config(config: dict) -> dict:
    """A `fast_vlm` config dict holding the model of a `conv_llava` config dict; raises for what it cannot express."""
    layer = config.get("vision_feature_layer", -1)
    if layer != -1:
        raise StockLayoutError(
            f"vision_feature_layer={layer!r}: transformers' FastVLM feeds the projector only the last ConvNeXt stage "
            "(-1). Keep --layout conv_llava for this model."
        )
    vision = dict(config["vision_config"])
    if vision.get("model_type") != "convnext":
        raise StockLayoutError(f"vision_config.model_type={vision.get('model_type')!r}: expected 'convnext'.")
    vision["hidden_size"] = vision["hidden_sizes"][-1]  # FastVLM sizes its projector by the tower's hidden_size
    stock = {key: value for key, value in config.items() if key not in PACKAGE_ONLY_CONFIG_KEYS}
    stock.update(
        model_type=STOCK_MODEL_TYPE,
        architectures=[STOCK_ARCHITECTURE],
        vision_config=vision,
        attn_implementation=STOCK_ATTENTION,
        **{STASH_KEY: {"image_resolution": config["image_resolution"]}},
    )
    return stock


def _resolution_of(config: dict, stride: int = VISION_STRIDE) -> int:
    """
    The square side a stock config (of a ConvNeXt whose stride is `stride`) was made for: its stashed
    `image_resolution`, else the one `image_seq_length` gives.
    """
    seq_length = config.get("image_seq_length")
    resolution = (config.get(STASH_KEY) or {}).get("image_resolution")
    if resolution is None:
        side = math.isqrt(seq_length) if isinstance(seq_length, int) and seq_length > 0 else 0
        if side * side != seq_length:
            raise StockLayoutError(f"image_seq_length={seq_length!r} is not the token count of a square image.")
        resolution = side * stride
    if not isinstance(resolution, int) or resolution <= 0 or resolution % stride:
        raise StockLayoutError(f"{STASH_KEY}.image_resolution={resolution!r} is not a multiple of {stride}.")
    if seq_length is not None and seq_length != (resolution // stride) ** 2:
        raise StockLayoutError(
            f"image_seq_length={seq_length!r} does not match a {resolution}x{resolution} image, which gives "
            f"{(resolution // stride) ** 2} tokens at the ConvNeXt's stride of {stride}."
        )
    return resolution


def vision_stride_description(vision_config: dict) -> str:
    """`patch_size` and `num_stages` of a ConvNeXt config, as the stride they make, for messages."""
    return (
        f"{vision_config.get('patch_size', 4)} x 2^(num_stages {vision_config.get('num_stages', 4)} - 1) = "
        f"{vision_stride(vision_config)}"
    )


def from_stock_config(config: dict, where: str = "config.json") -> dict:
    """The `conv_llava` config dict of a `fast_vlm` one written for ConvLLaVA; raises naming a field that is not."""
    vision = dict(config.get("vision_config") or {})
    if vision.get("model_type") != "convnext":
        raise StockLayoutError(
            f"{where}: vision_config.model_type={vision.get('model_type')!r}; ConvLLaVA's tower is a 'convnext'."
        )
    if vision_stride(vision) != VISION_STRIDE:
        raise StockLayoutError(
            f"{where}: the ConvNeXt's total stride is {vision_stride_description(vision)}, not ConvLLaVA's "
            f"{VISION_STRIDE} (vision_config.patch_size must be 4 and vision_config.num_stages 5)."
        )
    width = vision.get("hidden_size")
    if width is not None and width != vision["hidden_sizes"][-1]:
        raise StockLayoutError(
            f"{where}: vision_config.hidden_size={width!r} is not the last stage's width "
            f"(vision_config.hidden_sizes[-1]={vision['hidden_sizes'][-1]!r}), which FastVLM projects."
        )
    for key, expected in (("vision_feature_layer", -1), ("vision_feature_select_strategy", "full")):
        if config.get(key, expected) != expected:
            raise StockLayoutError(f"{where}: {key}={config[key]!r}; ConvLLaVA's FastVLM layout needs {expected!r}.")
    resolution = _resolution_of(config)
    dropped = (STASH_KEY, "architectures", "attn_implementation")
    converted = {key: value for key, value in config.items() if key not in dropped}
    converted.update(
        model_type="conv_llava",
        architectures=["ConvLlavaForConditionalGeneration"],
        vision_config=vision,
        image_resolution=resolution,
    )
    return converted


def to_stock_image_processor(image_processor: dict) -> dict:
    """The `LlavaImageProcessorPil` settings of a `pad`-mode ConvLLaVA image processor config dict."""
    mode = image_processor.get("image_aspect_ratio", "pad")
    if mode != "pad":
        raise StockLayoutError(
            f"image_aspect_ratio={mode!r}: LlavaImageProcessor only pads images to a square (the released models' "
            "'pad'). Keep --layout conv_llava, or use the package's processor for 'preserve'."
        )
    stock = {key: value for key, value in image_processor.items() if key not in PACKAGE_ONLY_IMAGE_KEYS}
    return {**stock, **STOCK_IMAGE_SETTINGS, "image_processor_type": STOCK_IMAGE_PROCESSOR_TYPE}
