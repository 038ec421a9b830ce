"""Sharded safetensors output: shards planned by `huggingface_hub`, each streamed one tensor in memory at a time."""

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards

from .checkpoint_reader import SAFETENSORS_DTYPES
from .errors import ConversionError

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, shape and dtype, and how to produce it when its shard is written."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def _header(shard: Sequence[PlannedTensor]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in shard:
        entries[tensor.name] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    return header + b" " * (-len(header) % 8)


def write_shard(path: Path, shard: Sequence[PlannedTensor]) -> None:
    """
    Write one safetensors file, producing and writing its tensors one by one: `safetensors.torch.save_file` would
    hold every cast or padded tensor of the shard in memory at once (5.3 GB instead of 0.86 GB for a 7B cast).
    """
    header = _header(shard)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for planned in shard:
            tensor = planned.load()
            if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
                raise ConversionError(
                    f"{planned.name}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                    f"planned {planned.shape} {planned.dtype}."
                )
            file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            del tensor


def write_safetensors(tensors: Sequence[PlannedTensor], folder: Path, max_shard_size: int) -> None:
    """
    Write `tensors` into `folder` like `save_pretrained`: `model.safetensors` if they fit in one shard, else
    `model-0000i-of-0000n.safetensors` files (split by `huggingface_hub`, in order; a tensor bigger than
    `max_shard_size` gets a shard alone) and `model.safetensors.index.json`.
    """
    planned = {tensor.name: tensor for tensor in tensors}
    if len(planned) != len(tensors):
        raise ConversionError("Duplicate output tensor names.")
    shapes = {name: torch.empty(tensor.shape, dtype=tensor.dtype, device="meta") for name, tensor in planned.items()}
    split = split_torch_state_dict_into_shards(shapes, max_shard_size=max_shard_size)
    for file_name, names in split.filename_to_tensors.items():
        write_shard(folder / file_name, [planned[name] for name in names])
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
