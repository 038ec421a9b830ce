"""
Count the prompts of `reference_ids.json` whose ids this package reproduces on the real Llama-2 tokenizer: through the
processor (images expanded) and through its saved `tokenizer.json` alone (one id per `<image>`), exactly and up to
the one designed difference (a text starting with a space gets no extra dummy prefix, `package_ids`). Run with the
package's `src` on PYTHONPATH:

    PYTHONPATH=src python modeling_tests/reference_tokenization/measure_agreement.py
"""

import json
import sys
import tempfile
from pathlib import Path

import PIL.Image
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
sys.path.insert(0, str(HERE.parent))
from convllava_hf.conversion.processor_building import processor_from_original  # noqa: E402
from original_tokenization import package_ids_of_row  # noqa: E402


def expand(ids: list[int], image_token_id: int, count: int) -> list[int]:
    return [token for i in ids for token in ([image_token_id] * count if i == -200 else [i])]


def main() -> None:
    rows = json.loads((HERE / "reference_ids.json").read_text(encoding="utf-8"))["llama2"]
    processor = processor_from_original(FIXTURES / "llama2-tokenizer", FIXTURES / "original-tiny" / "vision")
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        saved = PreTrainedTokenizerFast.from_pretrained(folder)
    image = PIL.Image.new("RGB", (8, 8))
    per_image = len(processor.replace_image_token(processor.image_processor([image]), 0)) // len("<image>")
    counts = {"processor": [0, 0], "saved tokenizer.json": [0, 0]}  # [exact, up to the leading-space difference]
    vicuna = [0, 0]  # vicuna-v1 prompts (they start with the system message) matched by the saved tokenizer, in all
    for row in rows:
        images = [image] * row["prompt"].count("<image>") or None
        designed = package_ids_of_row(row, processor.tokenizer.convert_tokens_to_ids("\u2581"))
        got = {
            "processor": (processor(images=images, text=row["prompt"])["input_ids"][0], per_image),
            "saved tokenizer.json": (saved(row["prompt"])["input_ids"], 1),
        }
        for name, (ids, tokens_per_image) in got.items():
            counts[name][0] += ids == expand(row["input_ids"], processor.image_token_id, tokens_per_image)
            counts[name][1] += ids == expand(designed, processor.image_token_id, tokens_per_image)
        if row["prompt"].startswith("A chat between"):
            vicuna[0] += got["saved tokenizer.json"][0] == expand(row["input_ids"], processor.image_token_id, 1)
            vicuna[1] += 1
    for name, (exact, designed) in counts.items():
        total = len(rows)
        print(f"{name}: {exact}/{total} prompts exactly as the original, {designed}/{total} up to a leading space")
    print(f"vicuna-v1 prompts, saved tokenizer.json: {vicuna[0]}/{vicuna[1]} exactly as the original")


if __name__ == "__main__":
    main()
