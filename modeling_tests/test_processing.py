"""ConvLlavaProcessor: the original's prompts and token ids, chat template, batching, save/load and bad inputs."""

import json
import shutil
import subprocess

import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer, LlamaTokenizer

from convllava_hf.conversion.processor_building import build_processor, processor_from_original
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from original_tokenization import (
    CASES,
    IMAGE_TOKEN_ID,
    IMAGES,
    ROWS,
    TOKENS_PER_IMAGE,
    OriginalSlowTokenizer,
    expanded,
    original_input_ids,
    original_vicuna_prompt,
    package_ids,
    tokenizer_image_token,
    user_message,
)
from tiny_models import FIXTURE_DIR


@pytest.fixture(scope="module")
def processor() -> ConvLlavaProcessor:
    return processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")


@pytest.fixture(scope="module")
def saved(processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reloaded(saved) -> ConvLlavaProcessor:
    return AutoProcessor.from_pretrained(saved)


@pytest.fixture(scope="module")
def original_tokenizer() -> OriginalSlowTokenizer:
    return OriginalSlowTokenizer()


def open_images(row: dict) -> list[PIL.Image.Image] | None:
    return [PIL.Image.open(IMAGES / row["image"])] if row["image"] else None


@pytest.mark.parametrize("name", ROWS)
def test_hand_written_original_tokenizer_reproduces_the_reference_ids(original_tokenizer, name):
    assert tokenizer_image_token(ROWS[name]["prompt"], original_tokenizer) == ROWS[name]["input_ids"]


@pytest.mark.parametrize("name", ROWS)
def test_saved_tokenizer_alone_gives_the_original_ids_on_whole_prompts(saved, name):
    tokenizer = AutoTokenizer.from_pretrained(saved)
    expected = [IMAGE_TOKEN_ID if token == -200 else token for token in ROWS[name]["input_ids"]]
    assert tokenizer(ROWS[name]["prompt"])["input_ids"] == expected


@pytest.mark.parametrize("name", ROWS)
def test_chat_template_reproduces_the_original_prompts(processor, name):
    row = ROWS[name]
    messages = [user_message(row["question"], 1 if row["image"] else 0)]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == row["prompt"]


def test_chat_template_accepts_plain_string_content(processor):
    messages = [{"role": "user", "content": ROWS["case3"]["question"]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == ROWS["case3"]["prompt"]


@pytest.mark.parametrize("name", ROWS)
def test_token_ids_equal_the_originals_with_image_tokens_expanded(processor, name):
    row = ROWS[name]
    outputs = processor(images=open_images(row), text=row["prompt"], return_tensors="pt")
    assert outputs["input_ids"].tolist() == [expanded(row["input_ids"])]
    assert outputs["attention_mask"].all()


def test_apply_chat_template_tokenizes_with_images_from_the_messages(processor):
    row = ROWS["case0"]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(IMAGES / row["image"])},
                {"type": "text", "text": row["question"]},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["input_ids"].tolist() == [expanded(row["input_ids"])]
    assert inputs["image_sizes"].tolist() == [[256, 256]]


def test_batch_is_left_padded_by_default_and_each_row_matches_the_original(processor):
    rows = CASES[4]["rows"]
    images, texts = [IMAGES / row["image"] for row in rows], [row["prompt"] for row in rows]
    outputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert processor.tokenizer.padding_side == "left"
    lengths = [len(expanded(row["input_ids"])) for row in rows]
    assert outputs["input_ids"].shape == (2, max(lengths))
    for input_ids, attention_mask, row, length in zip(outputs["input_ids"], outputs["attention_mask"], rows, lengths):
        padding = max(lengths) - length
        assert attention_mask.tolist() == [0] * padding + [1] * length
        assert input_ids.tolist() == [0] * padding + expanded(row["input_ids"])
    # the original's pixels of each row's image, stored with the single-image case that uses the same file
    case_of_image = {case["image"]: case["name"] for case in CASES if case.get("image")}
    reference = load_file(FIXTURE_DIR / "reference" / "reference.safetensors")
    expected = torch.cat([reference[f"{case_of_image[row['image']]}.pixel_values"] for row in rows])
    assert torch.equal(outputs["pixel_values"], expected)


FRAGMENTS = [
    "<image>", "<image>\n", " ", "  ", "\n", "\t", "</s>", "<s>", "<unk>", "USER:", " ASSISTANT:", "Hello", " world",
    "What is it?", "é", "日本", "\u2581", "42", "?", "!",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fragments=st.lists(st.sampled_from(FRAGMENTS), max_size=10))
def test_tokenization_matches_the_original_slow_tokenizer_on_any_text(
    processor, reloaded, saved, original_tokenizer, fragments
):
    text = "".join(fragments)
    images = [PIL.Image.new("RGB", (8, 8))] * text.count("<image>") or None
    counts = [TOKENS_PER_IMAGE] * text.count("<image>")
    expected = package_ids(text, lambda t: original_input_ids(t, original_tokenizer, counts, IMAGE_TOKEN_ID), 741)
    assert processor(images=images, text=text)["input_ids"] == [expected]
    assert reloaded(images=images, text=text)["input_ids"] == [expected]
    # the saved tokenizer alone, on the unexpanded text (as vLLM tokenises a prompt): one id per <image>
    tokenizer = reloaded.tokenizer
    one_id = lambda t: original_input_ids(t, original_tokenizer, [1] * len(counts), IMAGE_TOKEN_ID)  # noqa: E731
    assert tokenizer(text)["input_ids"] == package_ids(text, one_id, 741)


def test_text_after_an_image_starting_with_a_space_keeps_the_dummy_prefix(processor, original_tokenizer):
    text = "USER: <image> What is it?"  # sentencepiece: "▁", "▁What" after the image, not just "▁What"
    expected = original_input_ids(text, original_tokenizer, [TOKENS_PER_IMAGE], IMAGE_TOKEN_ID)
    assert processor(images=[PIL.Image.new("RGB", (8, 8))], text=text)["input_ids"] == [expected]
    after_image = expected[expected.index(IMAGE_TOKEN_ID) + TOKENS_PER_IMAGE :]
    assert after_image[0] == processor.tokenizer.convert_tokens_to_ids("\u2581")
    # alone (a completion tokenised apart from its prompt), the text gets no dummy prefix before its space
    assert processor.tokenizer(" What is it?", add_special_tokens=False)["input_ids"] == after_image[1:]


def test_multi_turn_multi_image_chat_matches_the_original_format_and_ids(processor, original_tokenizer):
    messages = [
        user_message("Compare these two pictures.", 2),
        {"role": "assistant", "content": [{"type": "text", "text": "The first one is wider."}]},
        user_message("And this one?", 1),
        {"role": "assistant", "content": "It is square."},
        user_message("Which is the tallest?", 0),
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == original_vicuna_prompt(
        [
            ("USER", "<image>\n<image>\nCompare these two pictures."),
            ("ASSISTANT", "The first one is wider."),
            ("USER", "<image>\nAnd this one?"),
            ("ASSISTANT", "It is square."),
            ("USER", "Which is the tallest?"),
            ("ASSISTANT", None),
        ]
    )
    assert "wider.</s>USER: <image>\nAnd" in prompt
    names = ("landscape_320x200.png", "portrait_150x260.png", "square_256x256.png")
    images = [PIL.Image.open(IMAGES / name) for name in names]
    input_ids = processor(images=images, text=prompt)["input_ids"][0]
    assert input_ids == original_input_ids(prompt, original_tokenizer, [TOKENS_PER_IMAGE] * 3, IMAGE_TOKEN_ID)
    assert input_ids.count(IMAGE_TOKEN_ID) == 3 * TOKENS_PER_IMAGE


def test_system_message_overrides_the_default_and_final_assistant_turn_can_be_empty(processor):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        user_message("Hi", 0),
        {"role": "assistant", "content": ""},
    ]
    assert processor.apply_chat_template(messages) == original_vicuna_prompt(
        [("USER", "Hi"), ("ASSISTANT", None)], system="You are terse."
    )


def test_unknown_role_is_rejected_by_the_template(processor):
    with pytest.raises(Exception, match="must be 'user' or 'assistant'"):
        processor.apply_chat_template([{"role": "tool", "content": "42"}])


def test_preserve_mode_expands_each_image_to_its_own_token_count():
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", image_aspect_ratio="preserve")
    images = [PIL.Image.open(IMAGES / "landscape_320x200.png"), PIL.Image.open(IMAGES / "portrait_150x260.png")]
    outputs = processor(images=images, text=["<image>\nA", "<image>\nB"], padding=True, return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [[192, 256], [256, 128]]
    assert (outputs["input_ids"] == IMAGE_TOKEN_ID).sum(-1).tolist() == [12, 8]
    assert processor._get_num_multimodal_tokens(image_sizes=[[200, 320], [260, 150]]).num_image_tokens == [12, 8]


def test_preserve_mode_counts_the_tokens_of_a_side_half_way_between_multiples_of_64_rounded_up():
    # at 768, 1000x375 scales to 768x288 and 625x1000 to 480x768; 288 = 4.5 * 64 and 480 = 7.5 * 64 round up to 5
    # and 8 units (floor: 4 and 7; round-half-even: 4 and 8), so 12 * 5 = 60 and 8 * 12 = 96 image tokens
    processor = processor_from_original(
        FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", resolution=768, image_aspect_ratio="preserve"
    )
    images = [PIL.Image.new("RGB", (1000, 375), (200, 30, 90)), PIL.Image.new("RGB", (625, 1000), (10, 250, 40))]
    outputs = processor(images=images, text=["<image>\nA", "<image>\nB"], padding=True, return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [[320, 768], [768, 512]]
    assert (outputs["input_ids"] == IMAGE_TOKEN_ID).sum(-1).tolist() == [60, 96]
    assert processor._get_num_multimodal_tokens(image_sizes=[[375, 1000], [1000, 625]]).num_image_tokens == [60, 96]


def test_num_multimodal_tokens_hook_follows_the_settings(processor):
    assert processor._get_num_multimodal_tokens(image_sizes=[[200, 320], [5000, 1]]).num_image_tokens == [16, 16]
    data = processor._get_num_multimodal_tokens(
        image_sizes=[[1000, 3000]], resolution=1536, image_aspect_ratio="preserve"
    )
    assert data.num_image_tokens == [192] and data.num_image_patches == [1]


def test_save_and_reload_with_auto_processor(processor, reloaded, tmp_path):
    assert type(reloaded) is ConvLlavaProcessor
    assert type(reloaded.image_processor) is ConvLlavaImageProcessor
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert reloaded.chat_template == processor.chat_template
    assert (reloaded.image_token, reloaded.image_token_id) == ("<image>", IMAGE_TOKEN_ID)
    assert reloaded.tokenizer.padding_side == "left"
    rows = CASES[4]["rows"]
    kwargs = {"images": [IMAGES / row["image"] for row in rows], "text": [row["prompt"] for row in rows]}
    expected = processor(**kwargs, padding=True, return_tensors="pt")
    actual = reloaded(**kwargs, padding=True, return_tensors="pt")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


# case2's new tokens hold an invalid UTF-8 byte run around a valid byte 0x02: sentencepiece keeps the 0x02, the
# tokenizers ByteFallback decoder (as every transformers Llama tokenizer) replaces each byte of the run by U+FFFD.
@pytest.mark.parametrize("name", ["case0", "case1", "case3"])
def test_decode_reproduces_the_original_generated_text(processor, name):
    row = ROWS[name]
    assert processor.decode(row["generated_ids"], skip_special_tokens=True) == row["generated_text"]
    assert processor.batch_decode([row["generated_ids"]] * 2, skip_special_tokens=True) == [row["generated_text"]] * 2


def test_decode_keeps_special_tokens_unless_asked_to_skip_them(processor):
    input_ids = processor(text="USER: Hello world</s>")["input_ids"][0]
    assert processor.decode(input_ids) == "<s> USER: Hello world</s>"
    assert processor.decode(input_ids, skip_special_tokens=True) == "USER: Hello world"


@pytest.mark.parametrize("crop_size", [192, {"height": 192, "width": 192}])
def test_from_original_reads_the_resolution_from_crop_size_as_an_int_or_a_dict(tmp_path, crop_size):
    vision = shutil.copytree(FIXTURE_DIR / "vision", tmp_path / "vision")
    config = json.loads((vision / "preprocessor_config.json").read_text())
    (vision / "preprocessor_config.json").write_text(json.dumps({**config, "crop_size": crop_size}))
    processor = processor_from_original(FIXTURE_DIR / "llm", vision)
    assert processor.image_processor.resolution == 192
    outputs = processor(images=PIL.Image.new("RGB", (300, 100)), text="<image>")
    assert outputs["image_sizes"] == [[192, 192]] and outputs["input_ids"][0].count(IMAGE_TOKEN_ID) == 9


@pytest.mark.parametrize(
    "text, image_count, message",
    [
        ("<image>\n<image>\nTwo markers", 1, "should be the same as the number of images"),
        ("<image>\nA marker", 0, "no images were passed"),
        ("No marker", 1, "should be the same as the number of images"),
        (["<image> one", "none"], 2, "should be the same as the number of images"),
    ],
)
def test_marker_and_image_counts_must_agree(processor, text, image_count, message):
    images = [PIL.Image.new("RGB", (8, 8))] * image_count or None
    with pytest.raises(ValueError, match=message):
        processor(images=images, text=text)


def test_image_token_is_added_after_the_vocabulary_when_the_tokenizer_lacks_it(processor):
    tokenizer = LlamaTokenizer.from_pretrained(FIXTURE_DIR / "llm")
    assert "<image>" not in tokenizer.get_vocab()
    assert ConvLlavaProcessor(processor.image_processor, tokenizer).image_token_id == IMAGE_TOKEN_ID
    assert tokenizer.convert_ids_to_tokens(IMAGE_TOKEN_ID) == "<image>"
    assert tokenizer.decode([IMAGE_TOKEN_ID, 273], skip_special_tokens=True) == tokenizer.decode([273])


def test_a_folder_with_a_plain_llama_tokenizer_gives_the_original_ids_once_rewritten(
    processor, original_tokenizer, tmp_path
):
    """Folders written before the whole-prompt tokenizer hold Vicuna's `LlamaTokenizer` (legacy=False) plus <image>."""
    processor.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).unlink()
    old_tokenizer = LlamaTokenizer.from_pretrained(FIXTURE_DIR / "llm", padding_side="left")
    old_tokenizer.add_tokens(["<image>"], special_tokens=True)
    old_tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    subprocess.run(["convllava-rewrite-tokenizer", str(tmp_path)], check=True, capture_output=True, timeout=120)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    text = "USER: <image> What?</s>USER: <image>\nAnd? ASSISTANT:"
    images = [PIL.Image.new("RGB", (8, 8))] * 2
    expected = original_input_ids(text, original_tokenizer, [TOKENS_PER_IMAGE] * 2, IMAGE_TOKEN_ID)
    assert loaded(images=images, text=text)["input_ids"] == [expected]
    assert old_tokenizer(text.replace("<image>", "<image>" * 16))["input_ids"] != expected  # what it fixes


def test_converter_warns_when_the_tokenizer_cannot_reproduce_the_original_prefix(tmp_path, caplog):
    llm = shutil.copytree(FIXTURE_DIR / "llm", tmp_path / "llm")
    config = json.loads((llm / "tokenizer_config.json").read_text())
    (llm / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": True}))
    with caplog.at_level("WARNING", logger="convllava_hf.conversion.processor_building"):
        build_processor(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", {}, IMAGE_TOKEN_ID)
        assert not caplog.records
        processor = build_processor(llm, FIXTURE_DIR / "vision", {}, IMAGE_TOKEN_ID)
    assert "not a legacy-free sentencepiece Llama tokenizer" in caplog.text and str(llm) in caplog.text
    assert processor.image_token_id == IMAGE_TOKEN_ID
