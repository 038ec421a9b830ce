"""Which converted tensor comes from which original tensor, checked against the model's own parameter list."""

import functools
import logging
from collections import Counter
from collections.abc import Callable

import torch

from ..configuration_conv_llava import ConvLlavaConfig
from ..embedding_padding import pad_rows_with_mean
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration
from .checkpoint_reader import CheckpointReader
from .config_conversion import ConfigConversion
from .errors import ConversionError
from .key_mapping import EMBEDDING_KEYS, map_llm_keys, map_vision_keys
from .safetensors_writer import PlannedTensor

logger = logging.getLogger(__name__)

#: ConvNextModel's pooling layernorm, which ConvLLaVA never applies and the original checkpoints lack. It is written
#: as identity weights, so that both layouts hold every weight of the model (vLLM refuses uninitialised weights).
POOLING_LAYERNORM = ("model.vision_tower.layernorm.weight", "model.vision_tower.layernorm.bias")
#: The dtypes a converted checkpoint can have; a float64 checkpoint is written as float32.
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def output_dtype(llm: CheckpointReader, vision: CheckpointReader, requested: torch.dtype | None) -> torch.dtype:
    """
    `requested`, else the floating dtype holding most of the LLM's weights (float32 for float64). Warns once when
    tensors are stored in float64, which no released checkpoint uses, saying what they are written as.
    """
    stored = Counter()
    for spec in llm.specs.values():
        if spec.dtype.is_floating_point:
            stored[spec.dtype] += torch.Size(spec.shape).numel()
    dtype = requested or (stored.most_common(1)[0][0] if stored else torch.float32)
    dtype = dtype if dtype in OUTPUT_DTYPES else torch.float32
    float64 = [f"{name} ({spec.file.name})" for r in (llm, vision) for name, spec in r.specs.items()
               if spec.dtype == torch.float64]  # fmt: skip
    if float64:
        logger.warning(
            "%d tensor(s) are stored in float64 and are written as %s like the rest: %s",
            len(float64),
            str(dtype).removeprefix("torch."),
            ", ".join(float64[:5]) + (", ..." if len(float64) > 5 else ""),
        )
    return dtype


def expected_parameters(config: ConvLlavaConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor `ConvLlavaForConditionalGeneration(config)` loads (built on the meta device)."""
    with torch.device("meta"):
        model = ConvLlavaForConditionalGeneration(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _loader(
    reader: CheckpointReader, name: str, dtype: torch.dtype, rows: int | None, other: CheckpointReader
) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        other.close()  # the other folder's file stays mapped only while a shard still holds its tensors
        tensor = reader.get(name)
        return tensor.to(dtype) if rows is None else pad_rows_with_mean(tensor, rows, dtype)

    return load


def plan_weights(
    conversion: ConfigConversion, llm: CheckpointReader, vision: CheckpointReader, dtype: torch.dtype
) -> list[PlannedTensor]:
    """
    The converted tensors in reading order (each source file once): LLM and projector, then vision tower. Refuses
    unknown, missing or misshapen tensors, naming them. The embedding and lm_head rows for `<image>` and the padding
    up to a multiple of 64 are the mean of the original rows.
    """
    sources = {new: (llm, old) for old, new in map_llm_keys(llm.specs).items()}
    dropped = conversion.dropped_vision_prefix
    kept_vision = [name for name in vision.specs if not (dropped and name.startswith(dropped))]
    sources.update({new: (vision, old) for old, new in map_vision_keys(kept_vision).items()})
    expected = expected_parameters(conversion.config)
    missing = [name for name in expected if name not in sources and name not in POOLING_LAYERNORM]
    if missing:
        raise ConversionError(f"The original checkpoint lacks tensor(s) the model needs: {', '.join(missing)}.")
    unexpected = [sources[name][1] for name in sources if name not in expected]
    if unexpected:
        raise ConversionError(
            f"The original checkpoint has tensor(s) the converted model has no place for: {', '.join(unexpected)}."
        )

    planned = []
    for name, (reader, old) in sources.items():
        stored = reader.specs[old].shape
        rows = expected[name][0] if name in EMBEDDING_KEYS else None
        wanted = (conversion.original_vocab_size, *expected[name][1:]) if rows is not None else expected[name]
        if stored != wanted:
            raise ConversionError(f"Tensor {old!r} has shape {list(stored)}; the config implies {list(wanted)}.")
        if not reader.specs[old].dtype.is_floating_point:
            raise ConversionError(
                f"Tensor {old!r} has dtype {reader.specs[old].dtype}; model weights are floating point."
            )
        other = vision if reader is llm else llm
        planned.append(PlannedTensor(name, expected[name], dtype, _loader(reader, old, dtype, rows, other)))
    for name in POOLING_LAYERNORM:  # identity weights: never applied, but every weight of the model is written
        fill = torch.ones if name.endswith(".weight") else torch.zeros
        planned.append(PlannedTensor(name, expected[name], dtype, functools.partial(fill, expected[name], dtype=dtype)))
    return planned
