"""`torch.compile(fullgraph=True)` of a forward with images, and `generate` with a static cache (compiled or not).

Compilation uses the `aot_eager` backend: it traces the whole graph as inductor does (dynamo and AOT autograd, where
graph breaks and data-dependent errors happen) without inductor's C++ build, which takes minutes on this CPU.
"""

import pytest
import torch
from transformers import CompileConfig

from tiny_models import TINY_IMAGE_TOKEN_ID, tiny_model

BACKEND = "aot_eager"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def prompt(prefix: list[int], suffix: list[int], num_image_tokens: int = 16) -> torch.Tensor:
    return torch.tensor([prefix + [TINY_IMAGE_TOKEN_ID] * num_image_tokens + suffix])


def compiled_graphs() -> int:
    """Graphs that dynamo has compiled since the last `torch._dynamo.reset()`."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def fresh_dynamo() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def test_fullgraph_compiled_forward_with_images_equals_eager(model):
    fresh_dynamo()
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    pixels = torch.randn(2, 3, 256, 256)
    cropped_input_ids = torch.cat([prompt([1, 5], [6], 8), prompt([1, 7], [8], 8)])
    full_input_ids = torch.cat([prompt([1, 5], [6]), prompt([1, 7], [8])])
    with torch.no_grad():
        eager_full = model(input_ids=full_input_ids, pixel_values=pixels).logits
        compiled_full = compiled(input_ids=full_input_ids, pixel_values=pixels).logits
        # image_sizes known at trace time (a list of ints): each image cropped to 128x256, 8 tokens
        sizes = [[128, 256], [128, 256]]
        eager_cropped = model(input_ids=cropped_input_ids, pixel_values=pixels, image_sizes=sizes).logits
        compiled_cropped = compiled(input_ids=cropped_input_ids, pixel_values=pixels, image_sizes=sizes).logits
    assert compiled_graphs() == 2  # one whole graph per input signature, no break
    torch.testing.assert_close(compiled_full, eager_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_cropped, eager_cropped, rtol=1e-5, atol=1e-5)


def test_fullgraph_compile_refuses_a_tensor_image_sizes_saying_to_pass_a_list(model):
    fresh_dynamo()
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    with pytest.raises(Exception, match="pass image_sizes as a list of ints"):
        compiled(
            input_ids=prompt([1, 5], [6], 8),
            pixel_values=torch.randn(1, 3, 256, 256),
            image_sizes=torch.tensor([[128, 256]]),
        )


def test_token_count_mismatch_still_raises_naming_both_counts_in_eager_mode(model):
    with pytest.raises(ValueError, match=r"The input has 17 image tokens \(id 800\) but the images give 16"):
        model(input_ids=prompt([1, 5], [6], 17), pixel_values=torch.randn(1, 3, 256, 256))


def left_padded_batch() -> dict[str, torch.Tensor]:
    rows = [prompt([1, 11, 12, 13, 14], [15, 16]), prompt([1, 21], [22])]
    width = max(row.shape[1] for row in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, width - row.shape[1] :] = row[0]
        attention_mask[index, width - row.shape[1] :] = 1
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(len(rows), 3, 256, 256, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def test_static_cache_greedy_ids_equal_the_dynamic_cache(model):
    inputs = left_padded_batch()
    dynamic = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    static = model.generate(**inputs, max_new_tokens=10, do_sample=False, cache_implementation="static")
    assert static.tolist() == dynamic.tolist()
    assert len(set(dynamic[:, -10:].flatten().tolist())) > 1  # not a degenerate constant continuation


GRAPH_CODES: list[str] = []


def recording_backend(graph_module, example_inputs, **options):
    """`aot_eager` that keeps each graph's code (a plain function: `CompileConfig` deep-copies its backend)."""
    GRAPH_CODES.append(graph_module.code)
    return torch._dynamo.lookup_backend(BACKEND)(graph_module, example_inputs)


def test_static_cache_with_compiled_decoding_gives_the_dynamic_cache_ids_without_host_syncs(model):
    fresh_dynamo()
    GRAPH_CODES.clear()
    inputs = {"input_ids": prompt([1, 11, 12], [13, 14]), "pixel_values": torch.randn(1, 3, 256, 256)}
    compile_config = CompileConfig(fullgraph=True, backend=recording_backend)
    compile_config._compile_all_devices = True  # generate compiles the decoding steps on GPUs only by default
    dynamic = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    static = model.generate(
        **inputs, max_new_tokens=5, do_sample=False, cache_implementation="static", compile_config=compile_config
    )
    assert static.tolist() == dynamic.tolist()
    assert GRAPH_CODES  # the decoding steps ran compiled
    # no `.item()` in a decoding step: a host synchronisation there would also keep CUDA graphs out
    assert not any(".item()" in code or "_local_scalar_dense" in code for code in GRAPH_CODES)
