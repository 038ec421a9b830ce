"""
The original ConvLLaVA's ids on the real Llama-2 (Vicuna-v1.5) tokenizer: the processor and its saved `tokenizer.json`
alone against `reference_tokenization/reference_ids.json`, which transformers 4.39.3's slow tokenizer made with the
original's `tokenizer_image_token` (`.ci/run` regenerates and diffs it).
"""

import hashlib
import json
import logging
import re
from pathlib import Path

import PIL.Image
import pytest
from transformers import AutoProcessor, AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from convllava_hf import ConvLlavaProcessor
from convllava_hf.cli.rewrite_tokenizer import rewrite_tokenizer
from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.whole_prompt_tokenizer import SPIECE_UNDERLINE, llama_piece_scores, piece_scores
from original_tokenization import package_ids_of_row
from tiny_models import FIXTURE_DIR

LLAMA2_DIR = FIXTURE_DIR.parent / "llama2-tokenizer"
REFERENCE = json.loads(
    (Path(__file__).parent / "reference_tokenization" / "reference_ids.json").read_text(encoding="utf-8")
)
ROWS = REFERENCE["llama2"]
HAND = {row["name"]: row for row in ROWS if not row["name"].startswith(("random_", "conversation_"))}
IMAGE_TOKEN_ID = 32000  # <image>, right after Llama-2's 32000 pieces
DUMMY_PREFIX_ID = 29871  # "▁"


def expected_ids(row: dict, image_tokens: int = 1) -> list[int]:
    """The row's ids as this package gives them (see `package_ids`), each -200 as `image_tokens` image ids."""
    ids = package_ids_of_row(row, DUMMY_PREFIX_ID)
    return [token for i in ids for token in ([IMAGE_TOKEN_ID] * image_tokens if i == -200 else [i])]


@pytest.fixture(scope="module")
def processor() -> ConvLlavaProcessor:
    return processor_from_original(LLAMA2_DIR, FIXTURE_DIR / "vision")


@pytest.fixture(scope="module")
def saved(processor, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama2-processor")
    processor.save_pretrained(folder)
    return folder


def test_rebuilt_tokenizer_model_is_meta_llama2_byte_for_byte():
    model = (LLAMA2_DIR / "tokenizer.model").read_bytes()
    assert len(model) == 499723
    assert hashlib.sha256(model).hexdigest() == "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def test_reference_holds_the_hand_cases_and_2000_random_prompts():
    assert len(HAND) >= 30 and sum(row["name"].startswith("random_") for row in ROWS) >= 2000
    assert REFERENCE["transformers_version"] == "4.39.3" and REFERENCE["tokenizer_class"] == "LlamaTokenizer"


@pytest.mark.parametrize("load", [PreTrainedTokenizerFast.from_pretrained, AutoTokenizer.from_pretrained])
def test_saved_tokenizer_json_alone_gives_the_original_ids_of_every_prompt(saved, load):
    tokenizer = load(saved)
    got = tokenizer([row["prompt"] for row in ROWS])["input_ids"]
    wrong = [row["name"] for row, ids in zip(ROWS, got) if ids != expected_ids(row)]
    assert not wrong, f"{len(wrong)}/{len(ROWS)} prompts differ from the original, e.g. {wrong[:5]}"


def test_processor_gives_the_original_ids_with_each_image_expanded(processor):
    image = PIL.Image.new("RGB", (8, 8))
    tokens_per_image = len(processor.replace_image_token(processor.image_processor([image]), 0)) // len("<image>")
    wrong = []
    for row in list(HAND.values()) + ROWS[len(HAND) :: 6]:  # every hand case, a sixth of the rest
        ids = processor(images=[image] * row["prompt"].count("<image>") or None, text=row["prompt"])["input_ids"][0]
        wrong += [row["name"]] * (ids != expected_ids(row, tokens_per_image))
    assert not wrong, f"prompts that differ from the original: {wrong[:5]}"


@pytest.mark.parametrize(
    "name, pieces",
    [
        ("image_ends_message_then_assistant", ["\u2581", "\u2581A", "SS", "IST", "ANT", ":"]),
        ("image_space_question", ["\u2581", "\u2581What", "\u2581is", "\u2581this", "?"]),
    ],
)
def test_text_after_an_image_starting_with_a_space_is_a_lone_dummy_prefix_then_its_words(saved, name, pieces):
    """The issue's cases: after an image, the original splits "▁▁ASSISTANT" as "▁", "▁A", "SS" (by piece score)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(saved)
    original = HAND[name]["input_ids"]
    assert tokenizer.convert_ids_to_tokens(original[original.index(-200) + 1 :]) == pieces
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(HAND[name]["prompt"])["input_ids"])
    assert tokens[tokens.index("<image>") + 1 :] == pieces


def test_the_one_difference_is_no_extra_dummy_prefix_before_a_leading_space(saved):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(saved)
    row = HAND["text_starting_with_a_space"]  # " Hello world"
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == ["<s>", SPIECE_UNDERLINE, "\u2581Hello", "\u2581world"]
    assert tokenizer.convert_ids_to_tokens(tokenizer(row["prompt"])["input_ids"]) == [
        "<s>",
        "\u2581Hello",
        "\u2581world",
    ]


@pytest.mark.parametrize("completion, first", [(" The circle is red.", "\u2581The"), (" 42", "\u2581")])
def test_a_completion_tokenised_alone_joins_its_prompt_as_in_the_whole_conversation(saved, completion, first):
    """What TRL's prompt-completion collators build: prompt and completion tokenised apart, then concatenated."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(saved)
    answer = completion + "</s>"
    rows = [row for row in ROWS if row["name"].startswith("conversation_") and row["prompt"].endswith(answer)]
    assert rows
    for row in rows:
        ids = tokenizer(row["prompt"][: -len(answer)])["input_ids"]
        ids += tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert ids == expected_ids(row)
    assert tokenizer.convert_ids_to_tokens(tokenizer(completion, add_special_tokens=False)["input_ids"])[0] == first


@pytest.mark.parametrize("folder", [LLAMA2_DIR, FIXTURE_DIR / "llm"])
def test_llamas_score_rule_ranks_the_merges_as_its_tokenizer_model_does(folder):
    """The rule a folder without its tokenizer.model (one saved by an earlier convllava-hf) is repaired with."""
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    scores = piece_scores(tokenizer, vocab)
    assert scores != llama_piece_scores(vocab)  # read from the tokenizer.model
    assert generate_merges(vocab, scores) == generate_merges(vocab, llama_piece_scores(vocab))


def old_whole_prompt_tokenizer_json() -> str:
    """The tokenizer.json convllava-hf wrote before this fix: merges ranked by id, a dummy prefix before every text."""
    tokenizer = LlamaTokenizer.from_pretrained(LLAMA2_DIR)  # transformers' own conversion ranks merges by id
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    not_before = "(?!" + "|".join(re.escape(token["content"]) for token in backend["added_tokens"]) + r"|\z)"
    backend["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
            {"type": "Replace", "pattern": {"Regex": rf"\A{not_before}"}, "content": SPIECE_UNDERLINE},
            {"type": "Replace", "pattern": {"Regex": rf"(?<=<image>){not_before}"}, "content": SPIECE_UNDERLINE},
        ],
    }
    backend["pre_tokenizer"] = None
    for token in backend["added_tokens"]:
        token["normalized"] = True
    return json.dumps(backend)


def test_a_folder_converted_before_the_fix_is_repaired_by_rewrite_tokenizer_with_a_warning(saved, tmp_path, caplog):
    old = tmp_path / "old"
    old.mkdir()
    for path in saved.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    (old / "tokenizer.json").write_text(old_whole_prompt_tokenizer_json())
    rows = list(HAND.values())
    stale = PreTrainedTokenizerFast.from_pretrained(old)([row["prompt"] for row in rows])["input_ids"]
    assert sum(ids != expected_ids(row) for row, ids in zip(rows, stale)) >= 5  # what the repair fixes
    with caplog.at_level(logging.WARNING):
        assert rewrite_tokenizer(old)
    assert "saved by an earlier convllava-hf" in caplog.text
    loaded = AutoProcessor.from_pretrained(old)
    got = loaded.tokenizer([row["prompt"] for row in rows])["input_ids"]
    assert [row["name"] for row, ids in zip(rows, got) if ids != expected_ids(row)] == []
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not rewrite_tokenizer(old)  # now the current form: nothing to rewrite
    assert "earlier convllava-hf" not in caplog.text
