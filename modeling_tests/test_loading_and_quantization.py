"""Loading a saved ConvLLaVA as 7B users do: dtypes, device_map with offload, bitsandbytes 4/8-bit, attention."""

import importlib.util

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

from tiny_models import TINY_IMAGE_TOKEN_ID, TINY_RESOLUTION, tiny_model

bnb = pytest.importorskip("bitsandbytes")

NEW_TOKENS = 6
BLOCKS = {"ConvNextLayer", "LlamaDecoderLayer"}  # each must sit whole on one device
QUANTIZED_LINEAR = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


@pytest.fixture(scope="module")
def reference():
    """The tiny model in float32 with a prompt holding one image, its logits and its greedy continuation."""
    model = tiny_model(seed=3)
    torch.manual_seed(0)
    inputs = {
        "input_ids": torch.tensor([[1, 5, 9] + [TINY_IMAGE_TOKEN_ID] * 16 + [17, 33]]),
        "pixel_values": torch.randn(1, 3, TINY_RESOLUTION, TINY_RESOLUTION),
    }
    with torch.no_grad():
        logits = model(**inputs).logits
    return {"model": model, "inputs": inputs, "logits": logits, "ids": greedy(model, inputs)}


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-convllava")
    reference["model"].save_pretrained(path)
    return path


def greedy(model, inputs: dict, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)


def logits_of(model, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].to(dtype)).logits.float()


def dequantized_reference(quantized, dtype: torch.dtype):
    """
    The float model with each quantized weight replaced by its dequantized value (bitsandbytes' own dequantizer for
    4-bit, int8 codes * row scale / 127 for 8-bit): what the quantized model computes, in plain PyTorch. Call it
    before the quantized model first runs: bitsandbytes' CPU backend then repacks 4-bit weights for its kernel.
    """
    model = tiny_model(seed=3)
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            scales = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            weight = module.weight.data.float() * scales.float()[:, None] / 127  # data holds the int8 codes
        else:
            continue
        model.get_submodule(name).weight.data = weight.float()
    return model.to(dtype)


def assert_matches_dequantized(quantized, reference, dtype: torch.dtype) -> None:
    """
    Logits within 1% of the largest logit of the dequantized model's (bitsandbytes' CPU kernels work in reduced
    precision inside: measured at most 0.8%; a wrong scale, block or skipped module is off by far more), and the
    same greedy ids.
    """
    expected_model = dequantized_reference(quantized, dtype)
    expected = logits_of(expected_model, reference["inputs"], dtype)
    logits = logits_of(quantized, reference["inputs"], dtype)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0.01 * expected.abs().max().item())
    expected_ids = greedy(expected_model, reference["inputs"], dtype)
    assert torch.equal(greedy(quantized, reference["inputs"], dtype), expected_ids)


def language_model_linears(model) -> set[str]:
    linears = (name for name, module in model.named_modules() if type(module) is nn.Linear)
    return {name for name in linears if name.startswith("model.language_model.")}


def quantized_modules(model) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, QUANTIZED_LINEAR)}


# --- dtypes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_puts_every_weight_in_that_dtype_and_keeps_logits(checkpoint, reference, dtype):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype)
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}
    tolerance = {torch.float16: 5e-3, torch.bfloat16: 5e-2, torch.float32: 1e-5}[dtype]
    logits = logits_of(model, reference["inputs"], dtype)
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=tolerance)


def test_legacy_torch_dtype_argument_is_honoured(checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, torch_dtype=torch.bfloat16)
    assert model.model.vision_tower.dtype == model.model.language_model.dtype == torch.bfloat16


# --- device_map / offload -------------------------------------------------------------------------------------------


def test_no_split_modules_keep_convnext_blocks_and_decoder_layers_whole(reference):
    assert BLOCKS <= set(reference["model"]._no_split_modules)


@pytest.fixture(scope="module")
def offloaded(checkpoint, reference, tmp_path_factory):
    """Loaded with `device_map="auto"` and a CPU budget of a third of the model, so the rest goes to disk."""
    budget = reference["model"].get_memory_footprint() // 3
    return AutoModelForImageTextToText.from_pretrained(
        checkpoint,
        device_map="auto",
        max_memory={"cpu": budget},
        offload_folder=str(tmp_path_factory.mktemp("offload")),
    )


def test_device_map_auto_offloads_to_disk_without_cutting_a_block(offloaded):
    device_map = offloaded.hf_device_map
    assert set(device_map.values()) == {"cpu", "disk"}
    assert any(".vision_tower." in name for name, device in device_map.items() if device == "cpu")
    for name in device_map:
        parts = name.split(".")
        ancestors = {type(offloaded.get_submodule(".".join(parts[:i]))).__name__ for i in range(1, len(parts))}
        assert not ancestors & BLOCKS, f"{name} is placed apart from the rest of its block"


def test_device_map_auto_with_offload_generates_the_same_ids(offloaded, reference):
    assert torch.equal(greedy(offloaded, reference["inputs"]), reference["ids"])


def test_explicit_device_map_splitting_tower_and_decoder_generates_the_same_ids(checkpoint, reference, tmp_path):
    device_map = {
        "model.vision_tower.embeddings": "cpu",
        "model.vision_tower.encoder.stages.0": "cpu",
        "model.vision_tower.encoder.stages.1": "disk",
        "model.vision_tower.encoder.stages.2": "cpu",
        "model.vision_tower.encoder.stages.3": "disk",
        "model.vision_tower.encoder.stages.4": "cpu",
        "model.vision_tower.layernorm": "disk",  # ConvNextModel's pooling layernorm, never applied
        "model.multi_modal_projector": "disk",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "disk",
        "model.language_model.layers.1": "cpu",
        "model.language_model.norm": "disk",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, device_map=device_map, offload_folder=str(tmp_path))
    assert torch.equal(greedy(model, reference["inputs"]), reference["ids"])


# --- bitsandbytes ---------------------------------------------------------------------------------------------------

FOUR_BIT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
def test_4bit_quantizes_only_language_model_linears(checkpoint, reference, compute_dtype):
    config = BitsAndBytesConfig(**FOUR_BIT, bnb_4bit_compute_dtype=compute_dtype)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, quantization_config=config, dtype=compute_dtype)

    assert quantized_modules(model) == language_model_linears(reference["model"])
    for name in quantized_modules(model):
        module = model.get_submodule(name)
        assert isinstance(module, bnb.nn.Linear4bit) and module.compute_dtype == compute_dtype
        assert module.weight.quant_type == "nf4" and module.weight.compress_statistics
    unquantized = (model.model.vision_tower, model.model.multi_modal_projector, model.lm_head)
    assert {parameter.dtype for part in unquantized for parameter in part.parameters()} == {compute_dtype}
    assert not any(isinstance(module, QUANTIZED_LINEAR) for part in unquantized for module in part.modules())

    assert_matches_dequantized(model, reference, compute_dtype)  # first: bitsandbytes repacks weights once run
    logits = logits_of(model, reference["inputs"], compute_dtype)
    assert torch.cosine_similarity(logits.flatten(), reference["logits"].flatten(), dim=0) > 0.9


def test_8bit_quantizes_only_language_model_linears(checkpoint, reference):
    config = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, quantization_config=config, dtype=torch.float16)

    assert quantized_modules(model) == language_model_linears(reference["model"])
    assert all(isinstance(model.get_submodule(name), bnb.nn.Linear8bitLt) for name in quantized_modules(model))
    unquantized = (model.model.vision_tower, model.model.multi_modal_projector, model.lm_head)
    assert {parameter.dtype for part in unquantized for parameter in part.parameters()} == {torch.float16}

    assert_matches_dequantized(model, reference, torch.float16)  # first: bitsandbytes repacks weights once run
    logits = logits_of(model, reference["inputs"], torch.float16)
    assert torch.cosine_similarity(logits.flatten(), reference["logits"].flatten(), dim=0) > 0.99


@pytest.mark.parametrize(
    ("config", "min_saving"), [(BitsAndBytesConfig(**FOUR_BIT), 0.7), (BitsAndBytesConfig(load_in_8bit=True), 0.45)]
)
def test_quantization_shrinks_memory_footprint_by_the_language_model_linears(checkpoint, config, min_saving):
    """bf16 -> 4-bit saves 75% of those weights' bytes (less block scales), bf16 -> int8 50% (less row scales)."""
    full = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.bfloat16)
    quantized = AutoModelForImageTextToText.from_pretrained(
        checkpoint, quantization_config=config, dtype=torch.bfloat16
    )
    linear_bytes = sum(full.get_submodule(name).weight.nbytes for name in language_model_linears(full))
    saving = full.get_memory_footprint() - quantized.get_memory_footprint()
    assert min_saving * linear_bytes <= saving <= linear_bytes


def test_llm_int8_skip_modules_replaces_the_default_and_can_quantize_the_tower(checkpoint, reference):
    config = BitsAndBytesConfig(**FOUR_BIT, llm_int8_skip_modules=["lm_head"])
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, quantization_config=config)
    every_linear = {name for name, module in reference["model"].named_modules() if type(module) is nn.Linear}
    assert quantized_modules(model) == every_linear - {"lm_head"}
    assert any(name.startswith("model.vision_tower.") for name in quantized_modules(model))


def test_quantization_config_given_as_dict_gets_the_same_default(checkpoint, reference):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, quantization_config=dict(FOUR_BIT))
    assert quantized_modules(model) == language_model_linears(reference["model"])


def test_saved_4bit_model_reloads_with_the_same_modules_quantized(checkpoint, reference, tmp_path):
    config = BitsAndBytesConfig(**FOUR_BIT)
    quantized = AutoModelForImageTextToText.from_pretrained(checkpoint, quantization_config=config)
    quantized.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert quantized_modules(reloaded) == language_model_linears(reference["model"])
    assert torch.equal(greedy(reloaded, reference["inputs"]), greedy(quantized, reference["inputs"]))


# --- attention implementation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [(None, "sdpa"), ("sdpa", "sdpa"), ("eager", "eager")])
def test_attn_implementation_reaches_the_language_model(checkpoint, reference, requested, expected):
    kwargs = {} if requested is None else {"attn_implementation": requested}
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, **kwargs)
    assert model.config.text_config._attn_implementation == expected
    assert model.model.language_model.layers[0].self_attn.config._attn_implementation == expected
    logits = logits_of(model, reference["inputs"], torch.float32)
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-5)


def test_set_attn_implementation_switches_the_language_model_at_runtime(checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="eager")
    model.set_attn_implementation("sdpa")
    assert model.model.language_model.layers[0].self_attn.config._attn_implementation == "sdpa"


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) for name in ("flash_attn", "kernels")),
    reason="flash-attention (or the kernels fallback) is installed",
)
def test_flash_attention_2_without_the_package_raises_a_clear_error(checkpoint):
    with pytest.raises(ImportError, match="FlashAttention2.*(not|n't).*installed"):
        AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="flash_attention_2")
