"""
vLLM plugin (entry point `vllm.general_plugins`): serve converted ConvLLaVA checkpoints with vLLM's Transformers
backend, with no remote code. vLLM calls `register` in every process it starts; nothing here is imported by
`import convllava_hf`.
"""

ARCHITECTURE = "ConvLlavaForConditionalGeneration"
MODEL_CLASS = "convllava_hf.vllm_backend:ConvLlavaTransformersForCausalLM"


def register() -> None:
    """
    Register ConvLLaVA with transformers' Auto classes (so vLLM's `AutoConfig`, `AutoModel` and `AutoProcessor` find
    it) and map its architecture to vLLM's multimodal Transformers backend (`vllm_backend`, loaded lazily), so the
    default `model_impl="auto"` serves it.
    """
    from vllm import ModelRegistry

    import convllava_hf  # noqa: F401  (registers the Auto classes)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
