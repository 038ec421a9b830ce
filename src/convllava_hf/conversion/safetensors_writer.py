"""Streaming safetensors writer: sharded files plus index, one tensor in memory at a time."""

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_reader import SAFETENSORS_DTYPES
from .errors import ConversionError

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, shape and dtype, and how to produce it when its turn comes."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def plan_shards(tensors: Sequence[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Split tensors, in order, into shards of at most `max_shard_size` bytes (a bigger tensor gets a shard alone)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


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
    """Write one safetensors file, producing and writing its tensors one by one."""
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


def write_safetensors(tensors: Sequence[PlannedTensor], folder: Path, max_shard_size: int) -> list[str]:
    """
    Write `tensors` into `folder` like `save_pretrained`: `model.safetensors` if they fit in one shard, else
    `model-0000i-of-0000n.safetensors` files and `model.safetensors.index.json`. Returns the file names written.
    """
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise ConversionError("Duplicate output tensor names.")
    shards = plan_shards(tensors, max_shard_size)
    if len(shards) == 1:
        write_shard(folder / SINGLE_FILE, shards[0])
        return [SINGLE_FILE]
    file_names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file_name, shard in zip(file_names, shards):
        write_shard(folder / file_name, shard)
    index = {
        "metadata": {"total_size": sum(tensor.nbytes for tensor in tensors)},
        "weight_map": {tensor.name: file_name for file_name, shard in zip(file_names, shards) for tensor in shard},
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*file_names, INDEX_FILE]
