"""ConvLlavaProcessor on transformers' standard ProcessorMixin path: replacement offsets, mm token types, offsets,
truncation, chat templates with images and assistant masks, and the kwargs conventions LlavaProcessor follows."""

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlavaImageProcessorPil, LlavaProcessor

from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from original_tokenization import (
    IMAGE_TOKEN_ID,
    IMAGES,
    ROWS,
    OriginalSlowTokenizer,
    expanded,
    original_input_ids,
    original_vicuna_prompt,
)
from tiny_models import FIXTURE_DIR

REFERENCE = load_file(FIXTURE_DIR / "reference" / "reference.safetensors")
PIXEL_TOLERANCE = 1e-5
PAD = 0  # the fixture's pad token, <unk>
# "preserve" mode at 256 px: landscape 320x200 -> 256x192 content (4x3 = 12 tokens), portrait 150x260 -> 128x256 (8)
PRESERVE_TOKENS = {"landscape_320x200.png": 12, "portrait_150x260.png": 8, "square_256x256.png": 16}


@pytest.fixture(scope="module")
def processor() -> ConvLlavaProcessor:
    return processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")


@pytest.fixture(scope="module")
def original_tokenizer() -> OriginalSlowTokenizer:
    return OriginalSlowTokenizer()


def image(name: str) -> PIL.Image.Image:
    return PIL.Image.open(IMAGES / name)


def test_image_replacement_is_a_string_that_encodes_to_one_id_per_visual_token(processor):
    replacement = processor.replace_image_token({"image_sizes": [[192, 256]]}, image_idx=0)
    assert replacement == "<image>" * 12
    for count in (1, 12, 576):
        assert processor.tokenizer("<image>" * count, add_special_tokens=False)["input_ids"] == [IMAGE_TOKEN_ID] * count


@pytest.mark.parametrize("name", ["case0", "case1", "case2", "case4.row0", "case4.row1"])
def test_swapping_each_placeholder_for_its_encoded_replacement_gives_the_processor_ids(processor, name):
    """What vLLM does: tokenize the prompt as one string, then replace each <image> id by the replacement's ids."""
    row = ROWS[name]
    prompt_ids = processor.tokenizer(row["prompt"])["input_ids"]
    outputs = processor(images=image(row["image"]), text=row["prompt"], return_text_replacement_offsets=True)
    replacement_ids = [
        processor.tokenizer(entry["replacement"], add_special_tokens=False)["input_ids"]
        for entry in outputs["text_replacement_offsets"][0]
    ]
    swapped = [token for i in prompt_ids for token in (replacement_ids.pop(0) if i == IMAGE_TOKEN_ID else [i])]
    assert swapped == outputs["input_ids"][0] == expanded(row["input_ids"])


def test_text_replacement_offsets_give_each_images_span_before_and_after_expansion():
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", image_aspect_ratio="preserve")
    names = ["landscape_320x200.png", "portrait_150x260.png", "square_256x256.png"]
    texts = ["USER: <image>\nA", "<image>\n<image>\nB"]
    outputs = processor(
        images=[image(name) for name in names], text=texts, return_text_replacement_offsets=True, padding=True
    )
    counts = [PRESERVE_TOKENS[name] for name in names]
    expected = [
        [{"type": "image", "span": (6, 13), "new_span": (6, 6 + 7 * counts[0]), "text": "<image>",
          "replacement": "<image>" * counts[0]}],
        [{"type": "image", "span": (0, 7), "new_span": (0, 7 * counts[1]), "text": "<image>",
          "replacement": "<image>" * counts[1]},
         {"type": "image", "span": (8, 15), "new_span": (7 * counts[1] + 1, 7 * (counts[1] + counts[2]) + 1),
          "text": "<image>", "replacement": "<image>" * counts[2]}],
    ]  # fmt: skip
    assert outputs["text_replacement_offsets"] == expected
    assert [row.count(IMAGE_TOKEN_ID) for row in outputs["input_ids"]] == [counts[0], counts[1] + counts[2]]


@pytest.mark.parametrize("name", ["case0", "case3"])
def test_mm_token_type_ids_mark_exactly_the_image_tokens(processor, name):
    row = ROWS[name]
    images = image(row["image"]) if row["image"] else None
    outputs = processor(images=images, text=row["prompt"], return_mm_token_type_ids=True, return_tensors="pt")
    expected = [[int(token == IMAGE_TOKEN_ID) for token in expanded(row["input_ids"])]]
    assert outputs["mm_token_type_ids"].tolist() == expected


def test_offsets_mapping_points_every_token_at_its_characters(processor):
    prompt = ROWS["case0"]["prompt"]
    outputs = processor(images=image(ROWS["case0"]["image"]), text=prompt, return_offsets_mapping=True)
    expanded_prompt = prompt.replace("<image>", "<image>" * 16)
    tokens = processor.tokenizer.convert_ids_to_tokens(outputs["input_ids"][0])
    start = prompt.index("<image>")
    image_offsets = [offset for token, offset in zip(tokens, outputs["offset_mapping"][0]) if token == "<image>"]
    assert image_offsets == [(start + 7 * i, start + 7 * (i + 1)) for i in range(16)]
    for token, (begin, end) in zip(tokens, outputs["offset_mapping"][0]):
        text = expanded_prompt[begin:end]
        if token.startswith("<0x"):
            assert text == chr(int(token[3:5], 16))
        elif token != "<s>":  # the dummy prefix "▁" of "▁A" (first token) and after the image has no character
            assert token.replace("\u2581", " ").lstrip() == text.lstrip() or token == "\u2581"


@pytest.mark.parametrize("max_length", [10, 45])
def test_truncation_of_text_cuts_like_the_tokenizer(processor, max_length):
    row = ROWS["case3"]
    outputs = processor(text=row["prompt"], truncation=True, max_length=max_length)
    assert outputs["input_ids"] == [row["input_ids"][:max_length]]


def test_truncation_that_keeps_every_image_token_is_allowed(processor):
    row = ROWS["case0"]  # 61 tokens, image tokens at 33..48
    outputs = processor(images=image(row["image"]), text=row["prompt"], truncation=True, max_length=49)
    assert outputs["input_ids"] == [expanded(row["input_ids"])[:49]]


def test_truncation_into_an_image_names_the_text_the_image_and_the_lengths(processor):
    row = ROWS["case0"]
    with pytest.raises(ValueError, match=r"text 0 to 40 tokens would cut into the tokens of its image 0 .* 61 tokens "
                       r"long, 16 of them image tokens, and only 7 .* max_length >= 49"):  # fmt: skip
        processor(images=image(row["image"]), text=row["prompt"], truncation=True, max_length=40)
    texts = ["<image>\nA", "USER: <image>\nB <image>\nC"]
    images = [image("square_256x256.png")] * 3
    with pytest.raises(ValueError, match=r"text 1 to 30 tokens would cut into the tokens of its image 1 "):
        processor(images=images, text=texts, truncation=True, max_length=30, padding=True)


def chat_with_image(key: str, row: dict) -> list[dict]:
    value = image(row["image"]) if key == "image" else str(IMAGES / row["image"])
    content = [{"type": "image", key: value}, {"type": "text", "text": row["question"]}]
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("key, name", [("image", "case0"), ("url", "case1"), ("path", "case2")])
def test_apply_chat_template_tokenizes_with_the_images_inside_the_messages(processor, key, name):
    row = ROWS[name]
    inputs = processor.apply_chat_template(
        chat_with_image(key, row), tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
    )
    assert inputs["input_ids"].tolist() == [expanded(row["input_ids"])]
    assert inputs["attention_mask"].all()
    torch.testing.assert_close(inputs["pixel_values"], REFERENCE[f"{name}.pixel_values"], atol=PIXEL_TOLERANCE, rtol=0)


def test_assistant_tokens_mask_covers_exactly_the_replies_and_their_end_of_sequence(processor, original_tokenizer):
    names = ["landscape_320x200.png", "square_256x256.png"]
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image(names[0])}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red disc."}]},
        {"role": "user", "content": [{"type": "image", "path": str(IMAGES / names[1])}, {"type": "text", "text": "R"}]},
        {"role": "assistant", "content": "Blue."},
    ]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    turns = [("USER", "<image>\nQ?"), ("ASSISTANT", "A red disc."), ("USER", "<image>\nR"), ("ASSISTANT", "Blue.")]

    def length(prompt: str) -> int:
        """Tokens of a prefix of the conversation, by the original tokenisation."""
        return len(original_input_ids(prompt, original_tokenizer, [16] * prompt.count("<image>"), IMAGE_TOKEN_ID))

    expected = [0] * length(original_vicuna_prompt(turns))
    for end in (2, 4):  # each reply: from after "ASSISTANT:" to its "</s>", both included
        reply_start = length(original_vicuna_prompt(turns[: end - 1] + [("ASSISTANT", None)]))
        expected[reply_start : length(original_vicuna_prompt(turns[:end]))] = [1] * (
            length(original_vicuna_prompt(turns[:end])) - reply_start
        )
    assert inputs["assistant_masks"].tolist() == [expected]
    assert inputs["input_ids"][0].tolist() == original_input_ids(
        original_vicuna_prompt(turns), original_tokenizer, [16, 16], IMAGE_TOKEN_ID
    )
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0][inputs["assistant_masks"][0] == 1])
    assert processor.tokenizer.convert_tokens_to_string(tokens) == "A red disc.</s> Blue.</s>"


def test_chat_template_renders_the_same_text_with_and_without_the_assistant_mask(processor):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == original_vicuna_prompt(
        [("USER", "Hi"), ("ASSISTANT", "Hello."), ("USER", "Bye"), ("ASSISTANT", None)]
    )
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert inputs["input_ids"] == [processor.tokenizer(prompt)["input_ids"]]


def left_padded(row: dict, length: int) -> list[int]:
    ids = expanded(row["input_ids"])
    return [PAD] * (length - len(ids)) + ids


TEXT_KWARGS = {"padding": "max_length", "max_length": 76}
IMAGES_KWARGS = {"image_aspect_ratio": "preserve"}


@pytest.mark.parametrize(
    "kwargs",
    [
        TEXT_KWARGS | IMAGES_KWARGS,  # unstructured
        {"text_kwargs": TEXT_KWARGS, "images_kwargs": IMAGES_KWARGS},  # structured
        {"common_kwargs": {"return_tensors": "pt"}, "text_kwargs": TEXT_KWARGS, "images_kwargs": IMAGES_KWARGS},
    ],
)
def test_text_and_image_kwargs_reach_their_processor_flat_or_nested(processor, kwargs):
    row = ROWS["case1"]  # portrait 150x260: 8 tokens in "preserve" mode instead of 16
    outputs = processor(images=image(row["image"]), text=row["prompt"], **kwargs)
    ids = torch.as_tensor(outputs["input_ids"]).tolist()[0]
    assert torch.as_tensor(outputs["image_sizes"]).tolist() == [[256, 128]]
    text_ids = [token for token in expanded(row["input_ids"]) if token != IMAGE_TOKEN_ID]
    assert ids == [PAD] * (76 - len(text_ids) - 8) + text_ids[:33] + [IMAGE_TOKEN_ID] * 8 + text_ids[33:]
    assert torch.as_tensor(outputs["attention_mask"]).tolist()[0] == [0] * (76 - len(text_ids) - 8) + [1] * (
        len(text_ids) + 8
    )


def test_a_kwarg_passed_both_flat_and_nested_is_refused(processor):
    with pytest.raises(ValueError, match="max_length was passed two times"):
        processor(text="Hi", max_length=10, text_kwargs={"max_length": 12})


def test_tokenizer_init_defaults_hold_until_a_call_overrides_them(processor, tmp_path):
    processor.tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, padding="max_length", max_length=70)
    padded = ConvLlavaProcessor(processor.image_processor, tokenizer)
    rows = [ROWS["case0"], ROWS["case2"]]
    kwargs = {"images": [image(row["image"]) for row in rows], "text": [row["prompt"] for row in rows]}
    assert padded(**kwargs)["input_ids"] == [left_padded(row, 70) for row in rows]
    assert padded(**kwargs, max_length=64)["input_ids"] == [left_padded(row, 64) for row in rows]
    assert padded(**kwargs, padding="longest")["input_ids"] == [left_padded(row, 61) for row in rows]


def test_outputs_are_the_model_input_names(processor):
    row = ROWS["case0"]
    outputs = processor(images=image(row["image"]), text=row["prompt"], return_tensors="pt")
    assert set(outputs) == set(processor.model_input_names)
    assert set(processor.model_input_names) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}


def stock_twin(processor) -> LlavaProcessor:
    """transformers' own LlavaProcessor with the same tokenizer, settings and pixels (LLaVA's PIL image processor)."""
    settings = {
        key: value for key, value in processor.image_processor.to_dict().items() if key != "image_processor_type"
    }
    return LlavaProcessor(
        LlavaImageProcessorPil(**settings), processor.tokenizer, patch_size=64, vision_feature_select_strategy="full"
    )


@pytest.mark.parametrize(
    "text, images",
    [(123, None), ([["pre", "tokenized"]], None), (("a", 5), None), (["<image>A", "<image><image>B"], "mixed")],
)
def test_malformed_text_and_image_layouts_get_llava_processors_own_error(processor, text, images):
    square = image("square_256x256.png")
    images = [square, [square, square]] if images == "mixed" else None
    with pytest.raises(Exception) as ours:
        processor(text=text, images=images, padding=True)
    with pytest.raises(Exception) as stock:
        stock_twin(processor)(text=text, images=images, padding=True)
    assert (type(ours.value), str(ours.value)) == (type(stock.value), str(stock.value))


def test_images_nested_per_text_must_match_each_texts_markers(processor):
    square = image("square_256x256.png")
    texts = ["<image>\nA", "<image>\n<image>\nB"]
    with pytest.raises(ValueError, match=r"one row per text.*rows of \[2, 1\] images for texts with \[1, 2\] markers"):
        processor(images=[[square, square], [square]], text=texts, padding=True)
    with pytest.raises(ValueError, match=r"rows of \[1, 2\] images for texts with \[1, 2, 0\] markers"):
        processor(images=[[square], [square, square]], text=[*texts, "C"], padding=True)
    nested = processor(images=[[square], [square, square]], text=texts, padding=True)
    flat = processor(images=[square] * 3, text=texts, padding=True)
    assert nested["input_ids"] == flat["input_ids"] and [row.count(IMAGE_TOKEN_ID) for row in nested["input_ids"]] == [
        16,
        32,
    ]


def test_batched_chats_with_and_without_images_give_each_original_row(processor):
    chats = [chat_with_image("image", ROWS["case0"]), [{"role": "user", "content": ROWS["case3"]["question"]}]]
    inputs = processor.apply_chat_template(
        chats, tokenize=True, return_dict=True, add_generation_prompt=True, processor_kwargs={"padding": True}
    )
    assert inputs["input_ids"] == [left_padded(ROWS["case0"], 61), left_padded(ROWS["case3"], 61)]
    assert inputs["image_sizes"] == [[256, 256]]


@pytest.mark.parametrize("images", [[], [[], []]])
def test_an_empty_list_of_images_is_handled_as_llava_processor_does(processor, images):
    texts = ["Hi", "Ho"]
    ours = processor(images=images, text=texts, padding=True, return_tensors="pt")
    stock = stock_twin(processor)(images=images, text=texts, padding=True, return_tensors="pt")
    assert set(ours) == {*stock, "image_sizes"} and torch.equal(ours["input_ids"], stock["input_ids"])
    assert len(ours["pixel_values"]) == len(ours["image_sizes"]) == len(stock["pixel_values"]) == 0


def test_a_bfloat16_image_tensor_gives_the_pixels_of_its_float32_values(processor):
    pixels = torch.rand(3, 100, 150).to(torch.bfloat16)
    from_bf16 = processor(images=pixels, text="<image>A", return_tensors="pt")
    from_fp32 = processor(images=pixels.float(), text="<image>A", return_tensors="pt")
    assert torch.equal(from_bf16["pixel_values"], from_fp32["pixel_values"])
    assert torch.equal(from_bf16["input_ids"], from_fp32["input_ids"])
