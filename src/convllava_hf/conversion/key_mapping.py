"""Parameter names of the original ConvLLaVA checkpoints and their names in `ConvLlavaForConditionalGeneration`."""

import re
from collections.abc import Iterable

from .errors import ConversionError

#: (pattern, replacement) for the LLM folder's tensors; the first full match wins.
LLM_KEY_RULES = (
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
    (r"model\.((?:embed_tokens|norm|layers\.\d+)\..+)", r"model.language_model.\1"),
    (r"lm_head\.weight", r"lm_head.weight"),
)

#: LLM tensors that carry no information: RoPE frequencies that older transformers versions saved as buffers.
LLM_DERIVED_KEYS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

#: The vision folder holds plain `ConvNextModel` parameter names.
VISION_KEY_RULES = ((r"((?:embeddings|encoder\.stages\.\d+)\..+)", r"model.vision_tower.\1"),)

#: ConvNextModel's final pooling LayerNorm: the original never applies it (and its own saver drops it).
VISION_UNUSED_KEYS = (r"layernorm\.(weight|bias)",)

EMBEDDING_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def map_keys(
    names: Iterable[str], rules: tuple[tuple[str, str], ...], ignored: tuple[str, ...], source: str
) -> dict[str, str]:
    """Name -> new name by the first `(pattern, replacement)` rule that matches; refuses names no rule or `ignored`
    pattern matches, naming them."""
    mapping, unknown = {}, []
    for name in names:
        rule = next((rule for rule in rules if re.fullmatch(rule[0], name)), None)
        if rule is not None:
            mapping[name] = re.sub(f"^{rule[0]}$", rule[1], name)
        elif not any(re.fullmatch(pattern, name) for pattern in ignored):
            unknown.append(name)
    if unknown:
        raise ConversionError(
            f"Unknown tensor(s) in the {source} checkpoint, refusing to guess where they belong: {', '.join(unknown)}."
        )
    return mapping


def map_llm_keys(names: Iterable[str]) -> dict[str, str]:
    """Original name -> converted name for the LLM folder's tensors; derivable buffers are left out."""
    return map_keys(names, LLM_KEY_RULES, LLM_DERIVED_KEYS, "LLM")


def map_vision_keys(names: Iterable[str]) -> dict[str, str]:
    """Original name -> converted name for the vision folder's tensors; the unused final LayerNorm is left out."""
    return map_keys(names, VISION_KEY_RULES, VISION_UNUSED_KEYS, "vision tower")
