"""ConvLLaVA: LLaVA with a hierarchical ConvNeXt vision tower that accepts any image size that is a multiple of 64."""

from collections import defaultdict

import torch
from torch import nn
from transformers import AutoModel, LlavaForConditionalGeneration, LlavaModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaModelOutputWithPast,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)
from transformers.utils import torch_compilable_check
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_conv_llava import ConvLlavaConfig
from .model_inputs import (
    ImageInput,
    check_finite_pixels,
    check_pixel_dtypes,
    check_token_id_dtype,
    check_token_ids,
    split_images,
    warn_if_longer_than_positions,
)
from .quantization import LanguageModelOnlyQuantizationMixin
from .vision_tower import ConvLlavaVisionModel


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
    # The identity final layernorm that a stock fast_vlm folder carries for ConvNextModel; ConvLLaVA never applies it.
    _keys_to_ignore_on_load_unexpected = [r"vision_tower\.layernorm\."]


def per_image_hidden_states(
    hidden_states_by_group: list[tuple[list[int], tuple[torch.Tensor, ...]]], num_images: int
) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per tower output, a tuple of each image's `(C, h, w)` map in input order, from batches of equal-size images."""
    maps = [[None] * num_images for _ in hidden_states_by_group[0][1]]
    for indices, group_hidden_states in hidden_states_by_group:
        for layer_maps, layer_batch in zip(maps, group_hidden_states):
            for index, image_map in zip(indices, layer_batch):
                layer_maps[index] = image_map
    return tuple(tuple(layer_maps) for layer_maps in maps)


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
        image_sizes: torch.Tensor | list | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | None:
        """
        Encode images of any sizes (multiples of 64 pixels) and project them into the language model's space.

        Args:
            pixel_values: a batch `(B, 3, H, W)`, or a list of `(3, h, w)` tensors of different sizes, of the
                processor's normalised floats. Integer pixels (raw 0..255) and NaN or Inf are refused with a
                `ValueError`.
            vision_feature_layer: ConvNeXt output to use (index into stem, stage 1, ..., stage 5); -1 by default.
            vision_feature_select_strategy: only `"full"` (accepted for LLaVA API compatibility).
            image_sizes: `(B, 2)` (height, width) of each image's content in a padded batch; each image is cropped
                to it before encoding, so padding never changes features. A tensor is read to the host once (the
                sizes decide the shapes), which `torch.compile(fullgraph=True)` refuses: there, pass a list of ints
                (trace-time constants) or `None` when every image fills the canvas.
            output_hidden_states: also return the vision tower's hidden states (stem, then each stage).

        Returns:
            `pooler_output`: a tuple with one `(h/64 * w/64, text_hidden_size)` tensor per image, in input order, each
            identical to encoding that image alone. Images of equal size are encoded together in one batch.
            `last_hidden_state`: the same grouping, before the projector, as a tuple of `(tokens, C)` tensors.
            `hidden_states` (with `output_hidden_states`): one entry per tower output (stem, stage 1, ..., stage 5),
            as LLaVA returns its tower's; `hidden_states[k][i]` is image `i`'s `(C, h, w)` map. When all images have
            one size, each entry is the tower's `(B, C, h, w)` tensor; otherwise a tuple of per-image maps.
            `None` when `pixel_values` is None (a text-only `generate(pixel_values=None)`).
        """
        if pixel_values is None:
            return None
        if vision_feature_select_strategy not in (None, "full"):
            raise ValueError(
                f"Only vision_feature_select_strategy='full' exists, got {vision_feature_select_strategy!r}."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        images = split_images(pixel_values, image_sizes)
        check_pixel_dtypes(images)
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
        hidden_states_by_group: list[tuple[list[int], tuple[torch.Tensor, ...] | None]] = []
        for size, indices in indices_by_size.items():
            if (
                isinstance(pixel_values, torch.Tensor)
                and len(indices) == len(images)
                and size == pixel_values.shape[-2:]
            ):
                batch = pixel_values  # nothing cropped: encode the batch as it is, without a copy
            else:
                batch = torch.stack([images[i] for i in indices])
            check_finite_pixels(batch, indices)
            outputs = self.vision_tower(
                batch.to(self.vision_tower.dtype),
                output_hidden_states=output_hidden_states or vision_feature_layer != -1,
            )
            feature_map = (
                outputs.last_hidden_state if vision_feature_layer == -1 else outputs.hidden_states[vision_feature_layer]
            )
            features = feature_map.flatten(2).transpose(1, 2)
            for i, image_features, image_projected in zip(indices, features, self.multi_modal_projector(features)):
                vision_features[i], projected[i] = image_features, image_projected
            hidden_states_by_group.append((indices, outputs.hidden_states))
        hidden_states = None
        if output_hidden_states:
            hidden_states = (
                hidden_states_by_group[0][1]  # one group, in input order: the tower's own tensors
                if len(hidden_states_by_group) == 1
                else per_image_hidden_states(hidden_states_by_group, len(images))
            )
        return BaseModelOutputWithPooling(
            last_hidden_state=tuple(vision_features), pooler_output=tuple(projected), hidden_states=hidden_states
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """
        Mask of the image-token positions. Raises a `ValueError` naming both counts if the number of image tokens
        differs from the number of image features (a `torch_compilable_check`: no host synchronisation under compile).
        On the meta device, which has no values to count, the mask is returned unchecked.
        """
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        if special_image_mask.device.type == "meta":
            return special_image_mask.unsqueeze(-1)
        num_image_tokens = special_image_mask.sum()
        num_image_features = image_features.shape[0]
        torch_compilable_check(
            num_image_tokens == num_image_features,
            lambda: (
                f"The input has {int(num_image_tokens)} image tokens (id {self.config.image_token_id}) but the images "
                f"give {num_image_features} image features; the processor must expand each <image> to its image's "
                "tokens."
            ),
        )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: ImageInput | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> LlavaModelOutputWithPast | tuple:
        """
        [`LlavaModel.forward`], after checking the ids: ids that are not integers or lie outside the vocabulary raise
        a `ValueError` that names them, and an input longer than `max_position_embeddings` warns once.

        The ids check costs a host synchronisation, so it runs in eager mode on prompts only: not on the one-token
        steps that `generate` decodes with a cache (their ids come from the model itself), not under `torch.compile`,
        where it could only add a message-less assertion and a synchronisation to the graph, and not on the meta
        device, which has no values.
        """
        if input_ids is not None:
            check_token_id_dtype(input_ids)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        decoding_step = input_ids is not None and input_ids.shape[1] == 1 and cache is not None
        if input_ids is not None and not decoding_step:
            embeddings = self.get_input_embeddings()
            vocab_size = getattr(embeddings, "num_embeddings", self.config.text_config.vocab_size)
            check_token_ids(input_ids, vocab_size, self.config.image_token_id)
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is not None:
            warn_if_longer_than_positions(
                tokens.shape[1], getattr(self.config.text_config, "max_position_embeddings", None)
            )
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, inputs_embeds=inputs_embeds, **kwargs)


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
