"""The converter's core promise: the converted original-tiny fixture reproduces the ORIGINAL implementation."""

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

import convllava_hf
from converted_tiny import convert_original_tiny
from convllava_hf.conversion.model_card import IMAGE_PLACEHOLDER, MODEL_ID_PLACEHOLDER
from tiny_models import FIXTURE_DIR

ORIGINAL_VOCAB = 800
IMAGE_TOKEN_ID = 800
LOGITS_TOLERANCE = 1e-4
PIXEL_TOLERANCE = 1e-5
REFERENCE = load_file(FIXTURE_DIR / "reference" / "reference.safetensors")
CASES = json.loads((FIXTURE_DIR / "reference" / "cases.json").read_text())["cases"]
SINGLE_CASES = [case for case in CASES if case["kind"] != "batch"]
BATCH_CASE = next(case for case in CASES if case["kind"] == "batch")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The fixture converted by the command-line script, in a fresh process, as a user would run it."""
    return convert_original_tiny(tmp_path_factory.mktemp("converted") / "convllava-tiny", layout="conv_llava")


@pytest.fixture(scope="module")
def loaded(converted):
    """(model, processor) loaded with the Auto classes, with every transformers warning captured."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        processor = AutoProcessor.from_pretrained(converted)
        model, info = AutoModelForImageTextToText.from_pretrained(converted, output_loading_info=True)
    finally:
        transformers_logger.removeHandler(handler)
    return model.eval(), processor, info, [record.getMessage() for record in records]


def messages_for(case: dict) -> list[dict]:
    content = [{"type": "image"}] if case.get("image") else []
    return [{"role": "user", "content": [*content, {"type": "text", "text": case["question"]}]}]


def expand_image_marker(input_ids: list[int]) -> list[int]:
    """The original's ids with its single -200 marker replaced by the 16 image-token ids of the converted model."""
    expanded = []
    for token in input_ids:
        expanded += [IMAGE_TOKEN_ID] * 16 if token == -200 else [token]
    return expanded


def process(processor, case: dict):
    prompt = processor.apply_chat_template(messages_for(case), add_generation_prompt=True)
    images = Image.open(FIXTURE_DIR / "images" / case["image"]) if case.get("image") else None
    return prompt, processor(images=images, text=prompt, return_tensors="pt")


def test_converted_folder_loads_with_auto_classes_without_key_warnings(loaded):
    model, processor, info, messages = loaded
    assert type(model) is convllava_hf.ConvLlavaForConditionalGeneration
    assert {kind: names for kind, names in info.items() if names} == {}
    key_warnings = [
        m
        for m in messages
        if any(word in m.lower() for word in ("missing", "unexpected", "newly initialized", "mismatch"))
    ]
    assert key_warnings == []
    assert type(processor).__name__ == "ConvLlavaProcessor"
    assert processor.image_token_id == IMAGE_TOKEN_ID == model.config.image_token_id


def test_converted_folder_has_safetensors_configs_processor_and_card_only(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "generation_config.json", "README.md", "processor_config.json", "tokenizer.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    assert json.loads((converted / "generation_config.json").read_text())["pad_token_id"] == 0
    assert not any(path.name.startswith(".") for path in converted.parent.iterdir())  # no staging leftovers


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda case: case["name"])
def test_prompt_pixel_values_and_input_ids_match_the_original(loaded, case):
    _, processor, _, _ = loaded
    prompt, inputs = process(processor, case)
    assert prompt == case["prompt"]
    assert inputs["input_ids"][0].tolist() == expand_image_marker(case["input_ids"])
    if case.get("image"):
        reference = REFERENCE[f"{case['name']}.pixel_values"]
        assert (inputs["pixel_values"] - reference).abs().max().item() <= PIXEL_TOLERANCE


@pytest.mark.parametrize("case", [*SINGLE_CASES, *BATCH_CASE["rows"]], ids=lambda case: case["prompt"][-12:])
def test_saved_tokenizer_alone_gives_the_original_ids_on_whole_prompts(converted, case):
    """What vLLM relies on: the checkpoint's tokenizer, on the unexpanded prompt, gives one <image> id per -200."""
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer(case["prompt"])["input_ids"] == [IMAGE_TOKEN_ID if i == -200 else i for i in case["input_ids"]]
    assert tokenizer("<image>" * 16, add_special_tokens=False)["input_ids"] == [IMAGE_TOKEN_ID] * 16


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda case: case["name"])
def test_logits_and_image_features_match_the_original(loaded, case):
    model, processor, _, _ = loaded
    _, inputs = process(processor, case)
    with torch.inference_mode():
        logits = model(**inputs).logits
        if case.get("image"):
            features = model.get_image_features(pixel_values=inputs["pixel_values"])
            assert (
                features.last_hidden_state[0] - REFERENCE[f"{case['name']}.image_features"][0]
            ).abs().max() <= LOGITS_TOLERANCE
            assert (
                features.pooler_output[0] - REFERENCE[f"{case['name']}.projected_image_features"][0]
            ).abs().max() <= LOGITS_TOLERANCE
    reference = REFERENCE[f"{case['name']}.logits"]
    assert logits.shape[:2] == reference.shape[:2]
    assert (logits[..., :ORIGINAL_VOCAB] - reference).abs().max().item() <= LOGITS_TOLERANCE


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda case: case["name"])
def test_greedy_generation_matches_the_original(loaded, case):
    model, processor, _, _ = loaded
    _, inputs = process(processor, case)
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens == REFERENCE[f"{case['name']}.generated_ids"][0].tolist()


def test_left_padded_batch_matches_the_original_right_padded_batch_on_valid_positions(loaded):
    model, processor, _, _ = loaded
    rows = BATCH_CASE["rows"]
    prompts = [processor.apply_chat_template(messages_for(row), add_generation_prompt=True) for row in rows]
    assert prompts == [row["prompt"] for row in rows]
    images = [Image.open(FIXTURE_DIR / "images" / row["image"]) for row in rows]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits[..., :ORIGINAL_VOCAB]
    reference, valid = REFERENCE["case4.logits"], REFERENCE["case4.expanded_attention_mask"].bool()
    for row in range(len(rows)):
        ours = logits[row][inputs["attention_mask"][row].bool()]
        assert ours.shape == reference[row][valid[row]].shape
        assert (ours - reference[row][valid[row]]).abs().max().item() <= LOGITS_TOLERANCE


def test_model_card_usage_snippet_answers_like_the_original(converted, capsys):
    # the snippet asks case0's question, so on case0's image its greedy answer starts with the original's 8 tokens
    case = next(case for case in SINGLE_CASES if case["name"] == "case0")
    card = (converted / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'question = "{case["question"]}"' in snippet
    image = FIXTURE_DIR / "images" / case["image"]
    exec(snippet.replace(MODEL_ID_PLACEHOLDER, str(converted)).replace(IMAGE_PLACEHOLDER, str(image)), {})
    assert capsys.readouterr().out.startswith(case["generated_text"])
