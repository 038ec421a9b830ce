"""bitsandbytes defaults for ConvLLaVA: quantize the language model's linear layers, nothing on the vision side."""

import copy

from transformers import BitsAndBytesConfig
from transformers.quantizers.auto import AutoQuantizationConfig


class LanguageModelOnlyQuantizationMixin:
    """
    Makes `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))` quantize only the language model.

    When the config's `llm_int8_skip_modules` is None it is set to the class's `bnb_skip_modules`, so the ConvNeXt
    tower, the projector and `lm_head` stay in the loading dtype. A user-given `llm_int8_skip_modules` replaces this
    list entirely (bitsandbytes matches each entry against a module path from its start, as a regex, or as a suffix:
    `"model.vision_tower"` covers the whole tower, a bare `"vision_tower"` only the container and none of its layers).
    """

    #: Module paths that bitsandbytes leaves unquantized unless `llm_int8_skip_modules` is given.
    bnb_skip_modules: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with `llm_int8_skip_modules` defaulting to `bnb_skip_modules`."""
        quantization_config = kwargs.get("quantization_config")
        if isinstance(quantization_config, dict):
            quantization_config = AutoQuantizationConfig.from_dict(quantization_config)
        if isinstance(quantization_config, BitsAndBytesConfig) and quantization_config.llm_int8_skip_modules is None:
            quantization_config = copy.deepcopy(quantization_config)
            quantization_config.llm_int8_skip_modules = list(cls.bnb_skip_modules)
            kwargs["quantization_config"] = quantization_config
        return super().from_pretrained(*args, **kwargs)


__all__ = ["LanguageModelOnlyQuantizationMixin"]
