"""
TRL's SFTTrainer (assistant-only loss), DPOTrainer (no `ref_model`) and GRPOTrainer train the converted fixture, given
as a path as a TRL user would, in the stock `fast_vlm` layout where `convllava_hf` cannot be imported, and in the
package's `conv_llava` layout with the package imported. The trainers run in trl_worker.py, one process per layout.
`.ci/run` runs this file in `.venv/trl`; skipped where TRL is not installed.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

pytest.importorskip("trl", reason="TRL is not installed; .ci/run runs this file in .venv/trl")

from converted_tiny import VICUNA_SYSTEM, convert_original_tiny  # noqa: E402
from tiny_models import TINY_IMAGE_TOKEN_ID  # noqa: E402

IMAGE_TOKENS = 16
EOS_ID, BOS_ID, PAD_ID = 2, 1, 0
LAYOUTS = ["fast_vlm", "conv_llava"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl")
    return {layout: convert_original_tiny(root / layout, layout=layout) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory) -> dict[str, dict]:
    """trl_worker.py's results per layout; the stock one with `convllava_hf` blocked from import."""
    worker = Path(__file__).with_name("trl_worker.py")
    results = {}
    for layout, folder in folders.items():
        out = tmp_path_factory.mktemp(f"trl_{layout}") / "results.json"
        flags = ["--block-package"] if layout == "fast_vlm" else []
        finished = subprocess.run(
            [sys.executable, str(worker), str(folder), str(out), *flags], capture_output=True, text=True,
            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        results[layout] = json.loads(out.read_text())
    return results


def trainer_result(runs: dict, layout: str, trainer: str) -> dict:
    result = runs[layout][trainer]
    assert "error" not in result, f"{trainer} on the {layout} layout failed:\n{result.get('traceback')}"
    return result


def test_stock_layout_trains_with_stock_classes_and_without_the_package(runs):
    assert runs["fast_vlm"]["loaded_convllava_hf"] is False
    for trainer in ("sft", "dpo", "grpo"):
        assert trainer_result(runs, "fast_vlm", trainer)["model_class"] == "FastVlmForConditionalGeneration"
        assert trainer_result(runs, "conv_llava", trainer)["model_class"] == "ConvLlavaForConditionalGeneration"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sft_assistant_only_loss_falls(runs, layout):
    sft = trainer_result(runs, layout, "sft")
    assert sft["losses"][-1] < 0.01 * sft["losses"][0]
    assert sft["moved"] == {"language_model": True, "multi_modal_projector": True}


def hand_built_sequence(turns: list[list[str]], tokenizer) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation written out by hand in Vicuna v1: only each " reply</s>" is labelled."""
    text, spans = f"{VICUNA_SYSTEM} ", []
    for index, (question, reply) in enumerate(turns):
        image = "<image>" * IMAGE_TOKENS + "\n" if index == 0 else ""
        text += f"USER: {image}{question} ASSISTANT:"
        spans.append((len(text), len(text) + len(f" {reply}</s>")))
        text += f" {reply}</s>"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin and end <= stop for start, stop in spans) else -100
        for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    return encoded["input_ids"], labels


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sft_mask_covers_exactly_the_assistant_replies_and_their_eos(runs, folders, layout):
    sft = trainer_result(runs, layout, "sft")
    tokenizer = AutoTokenizer.from_pretrained(folders[layout])
    width = len(sft["input_ids"][0])
    for turns, ids, labels, mask in zip(sft["conversations"], sft["input_ids"], sft["labels"], sft["attention_mask"]):
        expected_ids, expected_labels = hand_built_sequence(turns, tokenizer)
        padding = width - len(expected_ids)
        assert ids == expected_ids + [PAD_ID] * padding and mask == [1] * len(expected_ids) + [0] * padding
        assert labels == expected_labels + [-100] * padding
        assert ids.count(TINY_IMAGE_TOKEN_ID) == IMAGE_TOKENS
        assert [token for token in labels if token != -100].count(EOS_ID) == len(turns)


@pytest.mark.xfail(strict=True, reason="TRL tokenizes the rendered chat with add_special_tokens=False and the Vicuna "
                   "template renders no <s>, so SFT trains without the BOS that the original training and inference "
                   "prepend")  # fmt: skip
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sft_sequences_start_with_bos_as_in_the_original_training(runs, layout):
    assert all(ids[0] == BOS_ID for ids in trainer_result(runs, layout, "sft")["input_ids"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dpo_without_ref_model_builds_the_reference_and_trains(runs, layout):
    dpo = trainer_result(runs, layout, "dpo")
    assert dpo["ref_model_class"] == dpo["model_class"]
    assert dpo["losses"][-1] < dpo["losses"][0] and dpo["reward_margins"][-1] > 0
    assert dpo["moved"] == {"language_model": True, "multi_modal_projector": True}


STOCK_REFERENCE_DIFFERS = pytest.mark.xfail(
    strict=True,
    reason="the stock config declares attention {'': 'eager'}: the policy's language model runs SDPA, TRL's reference, "
    "rebuilt with the top-level 'eager' for every sub-model, runs eager, and in bf16 (TRL's default) the first loss "
    "is 0.6877, not ln 2",
)


@pytest.mark.parametrize("layout", [pytest.param("fast_vlm", marks=STOCK_REFERENCE_DIFFERS), "conv_llava"])
def test_dpo_reference_computes_as_the_policy_before_the_first_update(runs, layout):
    assert trainer_result(runs, layout, "dpo")["losses"][0] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dpo_policy_asked_for_eager_attention_has_a_reference_computing_alike(runs, layout):
    """The README's advice: `model_init_kwargs={"attn_implementation": "eager"}` gives the reference the same model."""
    assert trainer_result(runs, layout, "dpo_eager")["losses"][0] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grpo_with_images_trains_on_a_toy_reward(runs, layout):
    grpo = trainer_result(runs, layout, "grpo")
    assert len(grpo["rewards"]) == 2 and len(grpo["completions"]) == 4  # 2 steps x 1 prompt x 2 generations
    assert grpo["rewards"] == [pytest.approx(sum(map(len, grpo["completions"][s : s + 2])) / 2) for s in (0, 2)]
    assert grpo["moved"] == {"language_model": True, "multi_modal_projector": True}
