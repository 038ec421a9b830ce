"""
vLLM's multimodal Transformers backend for ConvLLaVA, plus the processor's check that a prompt has one `<image>` per
image. Loaded by vLLM through the plugin (`vllm_plugin`), never by `import convllava_hf`.
"""

from vllm.model_executor.models.transformers import TransformersMultiModalForCausalLM
from vllm.model_executor.models.transformers.multimodal import (
    MultiModalDummyInputsBuilder,
    MultiModalProcessingInfo,
    MultiModalProcessor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY


class ConvLlavaMultiModalProcessor(MultiModalProcessor):
    """
    vLLM's Transformers-backend processor, which refuses a prompt whose `<image>` markers do not match its images with
    `ConvLlavaProcessor`'s own error. vLLM hands the HF processor the images without the prompt, so the HF processor
    alone never sees the mismatch (vLLM would fail later with an internal assertion, or ignore extra markers).
    """

    def apply(self, inputs, timing_ctx):
        hf_processor = self.info.get_hf_processor()
        num_markers = inputs.prompt.count(hf_processor.image_token_id)
        images = inputs.mm_data_items.get("image")
        if num_markers != (0 if images is None else len(images)):
            hf_processor.validate_inputs(
                images=None if images is None else images.get_all(), text=[hf_processor.image_token * num_markers]
            )
        return super().apply(inputs, timing_ctx)


@MULTIMODAL_REGISTRY.register_processor(
    ConvLlavaMultiModalProcessor, info=MultiModalProcessingInfo, dummy_inputs=MultiModalDummyInputsBuilder
)
class ConvLlavaTransformersForCausalLM(TransformersMultiModalForCausalLM):
    """`TransformersMultiModalForCausalLM` with [`ConvLlavaMultiModalProcessor`]."""


# vLLM recognises its Transformers backend by class name (`ModelConfig.using_transformers_backend`, which selects
# the backend's compilation passes), so this subclass keeps its parent's name.
ConvLlavaTransformersForCausalLM.__name__ = TransformersMultiModalForCausalLM.__name__
ConvLlavaTransformersForCausalLM.__qualname__ = TransformersMultiModalForCausalLM.__qualname__
