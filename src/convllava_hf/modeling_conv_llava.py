"""ConvLLaVA: LLaVA with a hierarchical ConvNeXt vision tower that accepts any image size that is a multiple of 64."""

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, LlavaForConditionalGeneration, LlavaModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector, LlavaPreTrainedModel
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_conv_llava import ConvLlavaConfig
from .quantization import LanguageModelOnlyQuantizationMixin
from .vision_tower import ConvLlavaVisionModel

ImageInput = torch.Tensor | Sequence[torch.Tensor]


class ConvLlavaMultiModalProjector(LlavaMultiModalProjector):
    """Linear(vision width -> text width), GELU, Linear(text width -> text width): the original's `mlp2x_gelu`."""

    def __init__(self, config: ConvLlavaConfig):
        nn.Module.__init__(self)
        text_hidden_size = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(config.vision_feature_size, text_hidden_size, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=bias)


class ConvLlavaPreTrainedModel(LlavaPreTrainedModel):
    """Base class of the ConvLLaVA models: LLaVA's settings (SDPA/flash/flex attention, checkpointing)."""

    config: ConvLlavaConfig


def split_images(pixel_values: ImageInput, image_sizes: torch.Tensor | list | None) -> list[torch.Tensor]:
    """
    One `(3, h, w)` tensor per image, from a list of such tensors or from a batch `(B, 3, H, W)` whose image `i`
    fills the top-left `image_sizes[i]` (height, width) region (the rest is padding and is never encoded).
    """
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
            )
        if image_sizes is None:
            return list(pixel_values)
        if len(image_sizes) != len(pixel_values):
            raise ValueError(f"Got {len(image_sizes)} image_sizes for {len(pixel_values)} images in pixel_values.")
        sizes = torch.as_tensor(image_sizes).tolist()
        canvas_height, canvas_width = pixel_values.shape[-2:]
        if any(height > canvas_height or width > canvas_width for height, width in sizes):
            raise ValueError(f"image_sizes {sizes} exceed the pixel_values canvas ({canvas_height}, {canvas_width}).")
        return [image[:, :height, :width] for image, (height, width) in zip(pixel_values, sizes)]
    images = list(pixel_values)
    for image in images:
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise ValueError("A list of pixel_values must hold one (channels, height, width) tensor per image.")
    return images


class ConvLlavaModel(LanguageModelOnlyQuantizationMixin, ConvLlavaPreTrainedModel, LlavaModel):
    """The ConvNeXt vision tower, the projector and the language model, without a language modeling head."""

    bnb_skip_modules = ("vision_tower", "multi_modal_projector")

    def __init__(self, config: ConvLlavaConfig):
        ConvLlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = ConvLlavaVisionModel(config.vision_config)
        self.multi_modal_projector = ConvLlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: ImageInput,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | None:
        """
        Encode images of any sizes (multiples of 64 pixels) and project them into the language model's space.

        Args:
            pixel_values: a batch `(B, 3, H, W)`, or a list of `(3, h, w)` tensors of different sizes.
            vision_feature_layer: ConvNeXt output to use (index into stem, stage 1, ..., stage 5); -1 by default.
            vision_feature_select_strategy: only `"full"` (accepted for LLaVA API compatibility).
            image_sizes: `(B, 2)` (height, width) of each image's content in a padded batch; each image is cropped
                to it before encoding, so padding never changes features.

        Returns:
            `pooler_output`: a tuple with one `(h/64 * w/64, text_hidden_size)` tensor per image, in input order, each
            identical to encoding that image alone. Images of equal size are encoded together in one batch.
            `last_hidden_state`: the same grouping, before the projector, as a tuple of `(tokens, C)` tensors.
            `None` when `pixel_values` is None (a text-only `generate(pixel_values=None)`).
        """
        if pixel_values is None:
            return None
        if vision_feature_select_strategy not in (None, "full"):
            raise ValueError(
                f"Only vision_feature_select_strategy='full' exists, got {vision_feature_select_strategy!r}."
            )
        images = split_images(pixel_values, image_sizes)
        stride = self.config.vision_stride
        indices_by_size = defaultdict(list)
        for index, image in enumerate(images):
            height, width = image.shape[-2:]
            if height % stride or width % stride or height == 0 or width == 0:
                raise ValueError(
                    f"Image {index} is {height}x{width} pixels; both sides must be positive multiples of {stride}."
                )
            indices_by_size[(height, width)].append(index)

        vision_features: list[torch.Tensor | None] = [None] * len(images)
        projected: list[torch.Tensor | None] = [None] * len(images)
        for size, indices in indices_by_size.items():
            if (
                isinstance(pixel_values, torch.Tensor)
                and len(indices) == len(images)
                and size == pixel_values.shape[-2:]
            ):
                batch = pixel_values  # nothing cropped: encode the batch as it is, without a copy
            else:
                batch = torch.stack([images[i] for i in indices])
            outputs = self.vision_tower(
                batch.to(self.vision_tower.dtype), output_hidden_states=vision_feature_layer != -1
            )
            feature_map = (
                outputs.last_hidden_state if vision_feature_layer == -1 else outputs.hidden_states[vision_feature_layer]
            )
            features = feature_map.flatten(2).transpose(1, 2)
            for i, image_features, image_projected in zip(indices, features, self.multi_modal_projector(features)):
                vision_features[i], projected[i] = image_features, image_projected
        return BaseModelOutputWithPooling(last_hidden_state=tuple(vision_features), pooler_output=tuple(projected))

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Mask of the image-token positions; raises if their number differs from the number of image features."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        num_image_tokens = int(special_image_mask.sum())
        num_image_features = image_features.shape[0]
        if num_image_tokens != num_image_features:
            raise ValueError(
                f"The input has {num_image_tokens} image tokens (id {self.config.image_token_id}) but the images give "
                f"{num_image_features} image features; the processor must expand each <image> to its image's tokens."
            )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)


class ConvLlavaForConditionalGeneration(
    LanguageModelOnlyQuantizationMixin, ConvLlavaPreTrainedModel, LlavaForConditionalGeneration
):
    """ConvLLaVA with a language modeling head: `generate()` encodes the images once, at prefill."""

    bnb_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

    def __init__(self, config: ConvLlavaConfig):
        ConvLlavaPreTrainedModel.__init__(self, config)
        self.model = ConvLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = ["ConvLlavaForConditionalGeneration", "ConvLlavaModel", "ConvLlavaPreTrainedModel", "ConvLlavaVisionModel"]
