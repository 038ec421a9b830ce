"""
Count the prompts of `reference_ids.json` whose ids this package reproduces on the real Llama-2 tokenizer: through the
processor (images expanded) and through its saved `tokenizer.json` alone (one id per `<image>`). Run with the
package's `src` on PYTHONPATH:

    PYTHONPATH=src python modeling_tests/reference_tokenization/measure_agreement.py
"""

import json
import tempfile
from pathlib import Path

import PIL.Image
from transformers import PreTrainedTokenizerFast

from convllava_hf import ConvLlavaProcessor

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"


def expand(ids: list[int], image_token_id: int, count: int) -> list[int]:
    return [token for i in ids for token in ([image_token_id] * count if i == -200 else [i])]


def main() -> None:
    rows = json.loads((HERE / "reference_ids.json").read_text(encoding="utf-8"))["llama2"]
    processor = ConvLlavaProcessor.from_original(FIXTURES / "llama2-tokenizer", FIXTURES / "original-tiny" / "vision")
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        saved = PreTrainedTokenizerFast.from_pretrained(folder)
    image = PIL.Image.new("RGB", (8, 8))
    per_image = len(processor.replace_image_token(processor.image_processor([image]), 0)) // len("<image>")
    by_processor = by_tokenizer = 0
    for row in rows:
        images = [image] * row["prompt"].count("<image>") or None
        ids = processor(images=images, text=row["prompt"])["input_ids"][0]
        by_processor += ids == expand(row["input_ids"], processor.image_token_id, per_image)
        by_tokenizer += saved(row["prompt"])["input_ids"] == expand(row["input_ids"], processor.image_token_id, 1)
    print(f"processor: {by_processor}/{len(rows)} prompts match; saved tokenizer.json: {by_tokenizer}/{len(rows)}")


if __name__ == "__main__":
    main()
