"""
TRL's DPO and prompt-completion SFT on ConvLLaVA: their collators tokenise each completion apart from its prompt, and
what they train on must be the original's whole-conversation ids, with no stray "▁" before the answer. Runs where TRL
is installed (`.ci/run` makes `.venv/trl`); skipped elsewhere.
"""

import json
from pathlib import Path

import PIL.Image
import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from converted_tiny import convert_original_tiny  # noqa: E402
from convllava_hf.conversion.processor_building import processor_from_original
from tiny_models import FIXTURE_DIR, TINY_TEXT, tiny_model  # noqa: E402

REFERENCE = json.loads(
    (Path(__file__).parent / "reference_tokenization" / "reference_ids.json").read_text(encoding="utf-8")
)
CONVERSATION = "conversation_0_0"  # "... USER: <image>\nWhat colour is the circle? ASSISTANT: The circle is red.</s>"
QUESTION, ANSWER = "What colour is the circle?", "The circle is red."


@pytest.fixture(scope="module")
def fixture_setup(tmp_path_factory):
    """The converted original-tiny fixture, and its original whole-conversation ids (4.39.3's slow tokenizer)."""
    folder = convert_original_tiny(tmp_path_factory.mktemp("converted") / "model")
    rows = {row["name"]: row for row in REFERENCE["original_tiny_conversations"]}
    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    return model, processor, rows[CONVERSATION]


@pytest.fixture(scope="module")
def llama2_setup(tmp_path_factory):
    """A saved tiny model over the real Llama-2 vocabulary (<image> = 32000), its processor, and the original ids."""
    folder = tmp_path_factory.mktemp("llama2") / "model"
    processor = processor_from_original(FIXTURE_DIR.parent / "llama2-tokenizer", FIXTURE_DIR / "vision")
    model = tiny_model(text_config={**TINY_TEXT, "vocab_size": 32064}, image_token_index=processor.image_token_id)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    rows = {row["name"]: row for row in REFERENCE["llama2"]}
    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    return model, processor, rows[CONVERSATION]


def trained_batch(kind: str, model, processor, output_dir: Path) -> dict:
    """Run TRL's `kind` trainer ("dpo" or "sft") one step on one image question; return the batch it trained on."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    reply = lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # noqa: E731
    example = {"images": [PIL.Image.new("RGB", (64, 64), "red")], "prompt": [user]}
    settings = dict(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=2, report_to=[])
    settings |= dict(use_cpu=True, bf16=False, save_strategy="no", dataloader_num_workers=0)
    if kind == "dpo":
        data = [example | {"chosen": reply(ANSWER), "rejected": reply("The circle is blue.")}] * 2
        trainer = DPOTrainer(model=model, args=DPOConfig(**settings), train_dataset=Dataset.from_list(data),
                             processing_class=processor)  # fmt: skip
    else:
        data = [example | {"completion": reply(ANSWER)}] * 2
        trainer = SFTTrainer(model=model, args=SFTConfig(**settings), train_dataset=Dataset.from_list(data),
                             processing_class=processor)  # fmt: skip
    batches, collate = [], trainer.data_collator
    trainer.data_collator = lambda examples: batches.append(collate(examples)) or batches[-1]
    trainer.train()
    return batches[0]


@pytest.mark.parametrize("kind", ["dpo", "sft"])
@pytest.mark.parametrize("setup", ["fixture_setup", "llama2_setup"])
def test_trl_trains_on_the_original_whole_conversation_with_the_answers_own_first_piece(request, setup, kind, tmp_path):
    model, processor, original = request.getfixturevalue(setup)
    batch = trained_batch(kind, model, processor, tmp_path)
    keep = batch["attention_mask"][0].bool()  # row 0: the chosen (DPO) or only completion (SFT)
    trained = batch["completion_mask"] if kind == "dpo" else batch["labels"] != -100  # SFT masks the prompt's labels
    ids, trained = batch["input_ids"][0][keep].tolist(), trained[0][keep].tolist()
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(ids[trained.index(1)]) == "\u2581The"
    assert trained == sorted(trained) and ids[-1] == tokenizer.eos_token_id  # the answer, to its end of sequence
    per_image = ids.count(processor.image_token_id)
    image = [processor.image_token_id] * per_image
    expected = [token for i in original["input_ids"] for token in (image if i == -200 else [i])]
    # TRL's collators tokenise with add_special_tokens=False (for templates that render the BOS); Vicuna's does not
    assert [tokenizer.bos_token_id] + ids == expected
