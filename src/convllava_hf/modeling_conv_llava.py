"""ConvLLaVA: LLaVA whose vision tower is transformers' `ConvNextModel`, so each image may have its own size."""

import copy
import operator
from collections import defaultdict

import torch
from torch import nn
from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.convnext.modeling_convnext import ConvNextLayer
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel
from transformers.quantizers.auto import AutoQuantizationConfig
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_conv_llava import ConvLlavaConfig


class ConvNextCheckpointingLayer(GradientCheckpointingLayer, ConvNextLayer):
    """transformers' `ConvNextLayer` as a `GradientCheckpointingLayer`, so checkpointing recomputes each block."""


class ConvLlavaPreTrainedModel(LlavaPreTrainedModel):
    """LLaVA's settings (attention kernels, checkpointing, compilation) for the ConvLLaVA models."""

    config: ConvLlavaConfig
    # ConvNextModel's pooling layernorm, which ConvLLaVA never applies: folders from before it was written lack it.
    _keys_to_ignore_on_load_missing = [r"vision_tower\.layernorm\."]
    bnb_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")  # bitsandbytes' default

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As transformers loads, a `BitsAndBytesConfig`'s unset `llm_int8_skip_modules` being `bnb_skip_modules`."""
        quantization = kwargs.get("quantization_config")
        if isinstance(quantization, dict):
            quantization = AutoQuantizationConfig.from_dict(quantization)
        if isinstance(quantization, BitsAndBytesConfig) and quantization.llm_int8_skip_modules is None:
            kwargs["quantization_config"] = quantization = copy.deepcopy(quantization)
            quantization.llm_int8_skip_modules = list(cls.bnb_skip_modules)
        return super().from_pretrained(*args, **kwargs)

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs):
        """As transformers sets it; the ConvNeXt tower, which has no attention, stays `"eager"`."""
        if isinstance(attn_implementation, str):
            attn_implementation = {"": attn_implementation, "text_config": attn_implementation}
        return super().set_attn_implementation({**attn_implementation, "vision_config": "eager"}, **kwargs)


def image_size_pairs(image_sizes: torch.Tensor | list, pixel_values: torch.Tensor) -> list[tuple[int, int]]:
    """`image_sizes` as one (height, width) pair of positive ints per image, within the `pixel_values` canvas."""
    rows, canvas = image_sizes, tuple(pixel_values.shape[-2:])
    if isinstance(image_sizes, torch.Tensor):  # the sizes decide each crop: read on the host, a graph break
        rows = torch.compiler.disable(image_sizes.tolist, reason="fullgraph: pass image_sizes as a list of ints")()
    try:
        pairs = [(operator.index(height), operator.index(width)) for height, width in rows]
    except (TypeError, ValueError):
        pairs = []
    if len(pairs) != len(pixel_values) or any(not (0 < h <= canvas[0] and 0 < w <= canvas[1]) for h, w in pairs):
        given = f"a tensor {tuple(image_sizes.shape)} of {image_sizes.dtype}" if rows is not image_sizes else rows
        raise ValueError(
            f"image_sizes must be one (height, width) pair of positive integers per image of pixel_values "
            f"({len(pixel_values)}), within its canvas {canvas}; got {given}."
        )
    return pairs


def check_pixels(batch: torch.Tensor, indices: list[int]) -> None:
    """Refuse integer pixels and NaN or Inf ones (silent wrong answers), naming the images; free on meta, compiled."""
    if not batch.is_floating_point():
        raise ValueError(
            f"pixel_values hold {batch.dtype} values; the model takes the normalised float pixels that "
            "ConvLlavaProcessor (or ConvLlavaImageProcessor) makes from images, not raw pixel values."
        )
    if batch.device.type != "meta" and not torch.compiler.is_compiling() and not batch.isfinite().all():
        bad = [index for index, image in zip(indices, batch) if not image.isfinite().all()]
        raise ValueError(f"pixel_values of image(s) {bad} hold NaN or Inf values; every pixel must be a finite number.")


class ConvLlavaModel(ConvLlavaPreTrainedModel, LlavaModel):
    """LLaVA's model with a ConvNeXt tower: images of any sizes that are multiples of 64 pixels."""

    bnb_skip_modules = ("vision_tower", "multi_modal_projector")

    def __init__(self, config: ConvLlavaConfig):
        config.vision_config._attn_implementation = "eager"  # a ConvNeXt has no attention to choose a kernel for
        super().__init__(config)
        for layer in self.vision_tower.modules():
            if type(layer) is ConvNextLayer:
                layer.__class__ = ConvNextCheckpointingLayer

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, image_sizes=None, **kwargs
    ) -> BaseModelOutputWithPooling | None:
        """
        Per image of a batch `(B, 3, H, W)` cropped to `image_sizes[i]` (or of a list of `(3, h, w)` tensors), in input
        order: `pooler_output` `(h/64 * w/64, text_hidden_size)`, `last_hidden_state` before the projector and, with
        `output_hidden_states`, the tower's `hidden_states` (per-image maps for mixed sizes). Equal sizes share a batch.
        """
        if pixel_values is None or len(pixel_values) == 0:  # text only, e.g. `generate(pixel_values=None)`
            return None
        images = list(pixel_values)
        if image_sizes is not None:
            images = [image[:, :h, :w] for image, (h, w) in zip(images, image_size_pairs(image_sizes, pixel_values))]
        stride, indices_by_size = self.config.vision_stride, defaultdict(list)
        for index, image in enumerate(images):
            height, width = image.shape[-2:]
            if height % stride or width % stride or not height or not width:
                raise ValueError(
                    f"Image {index} is {height}x{width} pixels; both sides must be positive multiples of {stride}."
                )
            indices_by_size[(height, width)].append(index)
        layer, all_states = vision_feature_layer, kwargs.get("output_hidden_states") or False
        features, projected, maps = [None] * len(images), [None] * len(images), None
        for indices in indices_by_size.values():
            whole_batch = isinstance(pixel_values, torch.Tensor) and image_sizes is None
            batch = pixel_values if whole_batch else torch.stack([images[i] for i in indices])
            check_pixels(batch, indices)
            outputs = self.vision_tower(
                batch.to(self.vision_tower.dtype), output_hidden_states=all_states or layer != -1
            )
            flat = (outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]).flatten(2).mT
            for index, image_features, image_projected in zip(indices, flat, self.multi_modal_projector(flat)):
                features[index], projected[index] = image_features, image_projected
            if all_states:
                maps = maps or [[None] * len(images) for _ in outputs.hidden_states]
                for layer_maps, layer_batch in zip(maps, outputs.hidden_states):
                    for index, image_map in zip(indices, layer_batch):
                        layer_maps[index] = image_map
        hidden_states = None
        if all_states:
            hidden_states = outputs.hidden_states if len(indices_by_size) == 1 else tuple(map(tuple, maps))
        return BaseModelOutputWithPooling(
            last_hidden_state=tuple(features), pooler_output=tuple(projected), hidden_states=hidden_states
        )

    def get_placeholder_mask(self, input_ids, inputs_embeds: torch.Tensor, image_features: torch.Tensor):
        """LLaVA's mask of the image-token positions; its count check names both counts, and is skipped on meta."""
        if inputs_embeds.device.type == "meta":
            return (input_ids == self.config.image_token_id).unsqueeze(-1)
        try:
            return super().get_placeholder_mask(input_ids, inputs_embeds, image_features)
        except ValueError as error:
            tokens = "" if input_ids is None else f" {int((input_ids == self.config.image_token_id).sum())}"
            raise ValueError(
                f"The input has{tokens} image tokens (id {self.config.image_token_id}) but the images give "
                f"{image_features.shape[0]} image features; the processor expands each <image> to its image's tokens."
            ) from error


class ConvLlavaForConditionalGeneration(ConvLlavaPreTrainedModel, LlavaForConditionalGeneration):
    """ConvLLaVA with a language modeling head: `generate()` encodes the images once, at prefill."""

    def __init__(self, config: ConvLlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)  # LLaVA's own __init__ would build a LlavaModel first
        self.model = ConvLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = ["ConvLlavaForConditionalGeneration", "ConvLlavaModel", "ConvLlavaPreTrainedModel"]
