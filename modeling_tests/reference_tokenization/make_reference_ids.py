"""
Write `reference_ids.json`: the original ConvLLaVA's input ids of every prompt in `prompts.py`, on the real Llama-2
tokenizer (`fixtures/llama2-tokenizer`) and, for the fine-tuning conversations, on the original-tiny fixture's.

Run with transformers 4.39.3 (the version the original pins) and its slow `LlamaTokenizer`, as the original loaded it
(`AutoTokenizer.from_pretrained(path, use_fast=False)`); `.ci/run` regenerates the file and diffs it with the
committed one:

    python make_reference_ids.py OUTPUT.json
"""

import json
import sys
from pathlib import Path

import transformers
from prompts import all_prompts, conversations
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
IMAGE_TOKEN_INDEX = -200


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    """The original `llava.mm_utils.tokenizer_image_token`, as it is (without `return_tensors`)."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])

    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def entries(tokenizer, prompts: list[tuple[str, str]]) -> list[dict]:
    """Each prompt's original ids; a prompt starting with a space (or "▁") also gets the ids of the rest of it."""
    rows = []
    for name, prompt in prompts:
        row = {"name": name, "prompt": prompt, "input_ids": tokenizer_image_token(prompt, tokenizer)}
        if prompt.startswith((" ", "\u2581")):
            row["input_ids_without_the_leading_space"] = tokenizer_image_token(prompt[1:], tokenizer)
        rows.append(row)
    return rows


def main(output: Path) -> None:
    if transformers.__version__ != "4.39.3":
        raise SystemExit(f"Run with transformers 4.39.3 (the original's), not {transformers.__version__}.")
    llama2 = AutoTokenizer.from_pretrained(FIXTURES / "llama2-tokenizer", use_fast=False)
    tiny = AutoTokenizer.from_pretrained(FIXTURES / "original-tiny" / "llm", use_fast=False)
    whole = [(name, prompt + completion) for name, prompt, completion in conversations()]
    reference = {
        "transformers_version": transformers.__version__,
        "tokenizer_class": type(llama2).__name__,
        "llama2": entries(llama2, all_prompts()),
        "original_tiny_conversations": entries(tiny, whole),
    }
    header = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in reference.items() if isinstance(value, str)]
    lines = ",\n".join(header)
    for key in ("llama2", "original_tiny_conversations"):
        rows = ",\n".join(f"    {json.dumps(row, ensure_ascii=False)}" for row in reference[key])
        lines += f',\n  "{key}": [\n{rows}\n  ]'
    output.write_text("{\n" + lines + "\n}\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "reference_ids.json")
