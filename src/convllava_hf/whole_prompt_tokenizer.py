"""
The original ConvLLaVA's tokenisation of whole prompts, as one `tokenizer.json` that the processor, vLLM and any stock
`PreTrainedTokenizerFast` share: sentencepiece's BPE (merges ranked by piece score) and the original's dummy prefixes.
"""

import json
import re
from pathlib import Path

from tokenizers import Tokenizer
from transformers import TokenizersBackend
from transformers.tokenization_utils_base import PreTrainedTokenizerBase, generate_merges
from transformers.utils import logging
from transformers.utils.import_utils import is_protobuf_available

from .processing_conv_llava import add_image_token

SPIECE_UNDERLINE = "\u2581"
#: Score sentencepiece gives Llama's whitespace-only pieces ("▁▁", "▁▁▁", ...): they merge after every other piece.
WHITESPACE_PIECE_SCORE = -1e9
#: Call defaults set when a tokenizer was created, carried over to its whole-prompt copy.
CALL_DEFAULTS = ("padding", "max_length", "truncation", "pad_to_multiple_of", "truncation_side")

logger = logging.get_logger(__name__)


def whole_prompt_normalizer(added_tokens: list[str], image_token: str) -> dict:
    """
    Spaces as "▁", then a dummy prefix "▁" inserted (zero-width) where the original's `tokenizer_image_token` began a
    sentencepiece call: right after each `image_token`, and at the start of the text unless it already starts with a
    space (as stock Llama tokenizers do, so a completion tokenised alone, `" The"`, gives `"▁The"`); never right before
    an added token or at the end. Added tokens are matched after the normalizer, so it sees them.
    """
    not_before = "(?!" + "|".join(re.escape(token) for token in added_tokens) + r"|\z)"
    return {
        "type": "Sequence",
        "normalizers": [
            {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
            {
                "type": "Replace",
                "pattern": {"Regex": rf"\A(?!{SPIECE_UNDERLINE}){not_before}"},
                "content": SPIECE_UNDERLINE,
            },
            {
                "type": "Replace",
                "pattern": {"Regex": rf"(?<={re.escape(image_token)}){not_before}"},
                "content": SPIECE_UNDERLINE,
            },
        ],
    }


def _is_whole_prompt(backend: dict) -> bool:
    """A `tokenizer.json` this module wrote, now or in an earlier version (spaces replaced first, no pre-tokenizer)."""
    normalizers = (backend.get("normalizer") or {}).get("normalizers") or [{}]
    return backend.get("pre_tokenizer") is None and normalizers[0].get("pattern") == {"String": " "}


def _is_sentencepiece_llama(backend: dict) -> bool:
    """A legacy-free Llama tokenizer converted from sentencepiece: BPE, no normalizer, Metaspace prefixing the start."""
    pre_tokenizer = backend.get("pre_tokenizer") or {}
    return (
        not backend.get("normalizer")
        and pre_tokenizer.get("type") == "Metaspace"
        and pre_tokenizer.get("prepend_scheme") == "first"
    )


def llama_piece_scores(vocab: dict[str, int]) -> dict[str, float]:
    """
    Scores that rank merges as Llama's (Vicuna's) sentencepiece model does: whitespace-only pieces score
    `WHITESPACE_PIECE_SCORE`, every other piece scores lower the later its id.
    """
    return {
        piece: WHITESPACE_PIECE_SCORE if len(piece) > 1 and set(piece) == {SPIECE_UNDERLINE} else -float(index)
        for piece, index in vocab.items()
    }


def piece_scores(tokenizer: PreTrainedTokenizerBase, vocab: dict[str, int]) -> dict[str, float]:
    """Each piece's sentencepiece score, from the tokenizer's `tokenizer.model` if it has one, else Llama's rule."""
    model_file = getattr(tokenizer, "vocab_file", None)
    if model_file and Path(model_file).is_file() and is_protobuf_available():
        from transformers.convert_slow_tokenizer import import_protobuf

        proto = import_protobuf().ModelProto.FromString(Path(model_file).read_bytes())
        if len(proto.pieces) == len(vocab):
            return {piece.piece: piece.score for piece in proto.pieces}
    return llama_piece_scores(vocab)


def original_exact_tokenizer(
    tokenizer: PreTrainedTokenizerBase, image_token: str = "<image>"
) -> TokenizersBackend | None:
    """
    A copy of a sentencepiece-style Llama tokenizer (BPE + Metaspace, no legacy prefixing, e.g. Vicuna's) that
    tokenises whole prompts, `image_token` included as one token, as the original ConvLLaVA's `tokenizer_image_token`
    did with transformers 4.39's slow `LlamaTokenizer` (`legacy=False`): the prompt split on `image_token`, each piece
    tokenised by sentencepiece with its own dummy prefix (see `whole_prompt_normalizer`), and BPE merging pieces in
    sentencepiece's order, by score (so `" ▁▁ASSISTANT"` is "▁", "▁A", "SS", ..., not "▁▁", "ASS", ...).

    One difference remains, by design: a text whose very start is a space gets no extra dummy prefix (`" Hello"` is
    "▁Hello", where the original gave "▁", "▁Hello"), so that a completion tokenised alone joins its prompt as it would
    inside the whole conversation. Prompts start with the system message, never with a space.

    A tokenizer this function made in an earlier version (merges ranked by id, a dummy prefix before every text) is
    rebuilt, with a warning; the current form is returned as `None`, like any other kind of tokenizer.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        return None
    if image_token not in tokenizer.get_vocab():
        add_image_token(tokenizer, image_token)
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
    normalizer = whole_prompt_normalizer([token["content"] for token in backend["added_tokens"]], image_token)
    if _is_whole_prompt(backend):
        if backend["normalizer"] == normalizer:
            return None
        logger.warning(
            "This tokenizer was saved by an earlier convllava-hf, whose ids could differ from the original ConvLLaVA's "
            "after spaces and at the start of a text tokenised alone; it is rebuilt. Rewrite the folder's tokenizer "
            "with `convllava-rewrite-tokenizer FOLDER` (or convert the checkpoint again)."
        )
    elif not _is_sentencepiece_llama(backend):
        return None
    vocab = backend["model"]["vocab"]
    special = {token["content"] for token in backend["added_tokens"] if token["special"]}
    backend["model"]["merges"] = [
        list(merge) for merge in generate_merges(vocab, piece_scores(tokenizer, vocab), skip_tokens=special)
    ]
    backend["normalizer"] = normalizer
    backend["pre_tokenizer"] = None
    for token in backend["added_tokens"]:
        token["normalized"] = True  # matched after the normalizer, which needs to see them
    return TokenizersBackend(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
        padding_side=tokenizer.padding_side,
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
        **{key: tokenizer.init_kwargs[key] for key in CALL_DEFAULTS if key in tokenizer.init_kwargs},
    )


__all__ = ["llama_piece_scores", "original_exact_tokenizer", "piece_scores", "whole_prompt_normalizer"]
