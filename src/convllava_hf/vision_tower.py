"""ConvLLaVA's vision tower: transformers' ConvNextModel without its pooling head, with activation checkpointing."""

import torch
from transformers import ConvNextConfig, ConvNextModel
from transformers.modeling_outputs import BaseModelOutputWithNoAttention


class ConvLlavaVisionModel(ConvNextModel):
    """
    A (five-stage) [`ConvNextModel`] that returns feature maps instead of a pooled vector.

    Modules and weight names are those of `ConvNextModel` (`embeddings.*`, `encoder.stages.N.*`) minus the final
    pooling `layernorm`, which ConvLLaVA never applies and its checkpoints do not contain. Any input height and width
    that is a multiple of the total stride works; each ConvNeXt block is checkpointed when activation checkpointing is
    enabled on the enclosing model.
    """

    # No attention layers: an attention kernel requested for the whole model is accepted here and simply unused.
    _supports_flash_attn = True

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        del self.layernorm
        self.gradient_checkpointing = False

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """A ConvNeXt has no attention, so any implementation requested for the whole model resolves to `"eager"`."""
        return "eager"

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **kwargs
    ) -> BaseModelOutputWithNoAttention:
        """
        Args:
            pixel_values: `(batch, 3, height, width)` normalised images.
            output_hidden_states: also return the stem output and every stage's output, each `(batch, C, h, w)`.

        Returns:
            `last_hidden_state`: the last stage's feature map `(batch, C, height / 64, width / 64)` for five stages.
        """
        hidden_states = self.embeddings(pixel_values)
        all_hidden_states = (hidden_states,)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.encoder.stages:
            for module in (*stage.downsampling_layer, *stage.layers):
                if checkpointing:
                    hidden_states = self._gradient_checkpointing_func(module.__call__, hidden_states)
                else:
                    hidden_states = module(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return BaseModelOutputWithNoAttention(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states if output_hidden_states else None
        )


__all__ = ["ConvLlavaVisionModel"]
