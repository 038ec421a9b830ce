"""
Print the first tokens TRL's DPO trains on for the chosen answer " The circle is red.": on the converted original-tiny
fixture and on a tiny model over the real Llama-2 vocabulary. Run from a checkout's root, in an environment with TRL,
with that checkout's `src` and `modeling_tests` on PYTHONPATH (the fixture is converted by that checkout's code):

    PYTHONPATH=src:modeling_tests .venv/trl/bin/python modeling_tests/reference_tokenization/trl_first_tokens.py \
        modeling_tests/fixtures/llama2-tokenizer
"""

import sys
import tempfile
from pathlib import Path

import PIL.Image
from datasets import Dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import DPOConfig, DPOTrainer

from converted_tiny import convert_original_tiny
from convllava_hf.conversion.processor_building import processor_from_original
from tiny_models import FIXTURE_DIR, TINY_TEXT, tiny_model


def first_trained_tokens(folder: Path, count: int = 4) -> list[str]:
    """One DPO step on one image question; the first `count` tokens of the chosen answer's trained span."""
    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}
    example = {"images": [PIL.Image.new("RGB", (64, 64), "red")], "prompt": [user]}
    for key, text in (("chosen", "The circle is red."), ("rejected", "The circle is blue.")):
        example[key] = [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
    args = DPOConfig(
        output_dir=str(folder / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True,
        bf16=False, save_strategy="no",
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([example] * 2), processing_class=processor
    )
    batches, collate = [], trainer.data_collator
    trainer.data_collator = lambda examples: batches.append(collate(examples)) or batches[-1]
    trainer.train()
    ids, trained = batches[0]["input_ids"][0].tolist(), batches[0]["completion_mask"][0].tolist()
    start = trained.index(1)
    return processor.tokenizer.convert_ids_to_tokens(ids[start : start + count])


def main(llama2_tokenizer: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        fixture = convert_original_tiny(Path(folder) / "fixture")
        llama2 = Path(folder) / "llama2"
        processor = processor_from_original(llama2_tokenizer, FIXTURE_DIR / "vision")
        text_config = {**TINY_TEXT, "vocab_size": 32064}
        tiny_model(text_config=text_config, image_token_index=processor.image_token_id).save_pretrained(llama2)
        processor.save_pretrained(llama2)
        print("converted fixture, DPO chosen answer starts:", first_trained_tokens(fixture))
        print("real Llama-2 vocabulary, DPO chosen answer starts:", first_trained_tokens(llama2))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
