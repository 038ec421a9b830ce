"""The original ConvLLaVA's tokenisation, rebuilt on sentencepiece as an independent reference for the tests."""

import json
import re
from collections.abc import Callable

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from tiny_models import FIXTURE_DIR

IMAGE_TOKEN_INDEX = -200  # the original's placeholder id in `tokenizer_image_token`
IMAGE_TOKEN_ID = 800  # <image> in the converted fixture, right after its 800-token vocabulary
TOKENS_PER_IMAGE = 16  # 256x256 canvas, stride 64
IMAGES = FIXTURE_DIR / "images"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CASES = json.loads((FIXTURE_DIR / "reference" / "cases.json").read_text())["cases"]
ROWS = {case["name"]: case for case in CASES[:4]} | {f"case4.row{i}": row for i, row in enumerate(CASES[4]["rows"])}


class OriginalSlowTokenizer:
    """transformers 4.39's slow `LlamaTokenizer` (legacy=False, add_prefix_space=True), rebuilt on sentencepiece."""

    specials = ("<unk>", "<s>", "</s>")

    def __init__(self):
        proto = sentencepiece_model_pb2.ModelProto.FromString((FIXTURE_DIR / "llm" / "tokenizer.model").read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.unk_length = len(self.sp.encode("<unk>", out_type=str))

    def _tokenize(self, text: str) -> list[str]:
        if not text.startswith(("\u2581", " ")):
            return self.sp.encode(text, out_type=str)
        return self.sp.encode("<unk>" + text, out_type=str)[self.unk_length :]

    def __call__(self, text: str) -> list[int]:
        tokens = []
        if text:
            special = "(" + "|".join(map(re.escape, self.specials)) + ")"
            pieces = re.split(special, "\u2581" + text.replace("\u2581", " "))
            tokens = [t for p in pieces if p for t in ([p] if p in self.specials else self._tokenize(p))]
            if len(tokens) > 1 and tokens[0] == "\u2581" and tokens[1] in self.specials:
                tokens = tokens[1:]
        return [1] + [self.sp.piece_to_id(token) for token in tokens]


def tokenizer_image_token(prompt: str, tokenizer: OriginalSlowTokenizer) -> list[int]:
    """The original `llava.mm_utils.tokenizer_image_token`: pieces between `<image>` tokenised alone, BOS kept once."""
    input_ids = [1]
    for index, chunk in enumerate(tokenizer(piece) for piece in prompt.split("<image>")):
        input_ids += [IMAGE_TOKEN_INDEX] * bool(index) + chunk[1:]
    return input_ids


def original_input_ids(
    prompt: str, tokenizer: OriginalSlowTokenizer, image_token_counts: list[int], image_token_id: int
) -> list[int]:
    """`tokenizer_image_token`, then the i-th -200 replaced by `image_token_counts[i]` copies of `image_token_id`."""
    counts = iter(image_token_counts)
    input_ids = []
    for token in tokenizer_image_token(prompt, tokenizer):
        input_ids += [image_token_id] * next(counts) if token == IMAGE_TOKEN_INDEX else [token]
    return input_ids


def package_ids(text: str, original_ids: Callable[[str], list[int]], dummy_prefix_id: int) -> list[int]:
    """
    The ids this package gives `text`, from the original procedure's `original_ids`: the same, except for a text
    starting with a space (or "▁"), which it tokenises as the original tokenises the rest of the text, since it adds no
    dummy prefix before that space; a lone "▁" (`dummy_prefix_id`) stays where the rest is empty or starts with an
    added token, which the original gives no dummy prefix.
    """
    if not text.startswith((" ", "\u2581")):
        return original_ids(text)
    rest = text[1:]
    if rest and not rest.startswith(("<image>", "<unk>", "<s>", "</s>")):
        return original_ids(rest)
    bos, *ids = original_ids(rest)
    return [bos, dummy_prefix_id, *ids]


def package_ids_of_row(row: dict, dummy_prefix_id: int) -> list[int]:
    """`package_ids` of a `reference_tokenization/reference_ids.json` row (-200 where each image goes)."""
    rest = row.get("input_ids_without_the_leading_space")
    return package_ids(row["prompt"], lambda text: row["input_ids"] if text == row["prompt"] else rest, dummy_prefix_id)


def expanded(input_ids: list[int]) -> list[int]:
    """Reference ids with each -200 replaced by the fixture's 16 image-token ids."""
    return [token for i in input_ids for token in ([IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE if i == -200 else [i])]


def original_vicuna_prompt(turns: list[tuple[str, str | None]], system: str = SYSTEM) -> str:
    """The original `conv_templates["v1"].get_prompt()` (sep_style TWO, seps " " and "</s>")."""
    prompt = system + " "
    for index, (role, message) in enumerate(turns):
        prompt += f"{role}: {message}{(' ', '</s>')[index % 2]}" if message else f"{role}:"
    return prompt


def user_message(question: str, image_count: int) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * image_count + [{"type": "text", "text": question}]}
