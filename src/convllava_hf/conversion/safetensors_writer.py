"""Sharded safetensors output, planned by `huggingface_hub`, written by `safetensors`, one shard in memory at a time."""

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import ConversionError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: How safetensors reports the OS error under a failed write: "... I/O error: No space left on device (os error 28)".
OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


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


def _produce(planned: PlannedTensor) -> torch.Tensor:
    tensor = planned.load()
    if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
        raise ConversionError(
            f"{planned.name}: produced {tuple(tensor.shape)} {tensor.dtype}, planned {planned.shape} {planned.dtype}."
        )
    return tensor.detach().contiguous()


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_shard(path: Path, shard: Sequence[PlannedTensor]) -> None:
    """
    Produce the tensors of one shard and write them as one safetensors file (metadata `{"format": "pt"}`), with the
    mode `save_pretrained` gives it (following the umask). Tensors copied unchanged stay memory-mapped views of their
    input file; cast or padded ones are in memory until the shard is written. A failed write raises its `OSError`.
    """
    tensors = {planned.name: _produce(planned) for planned in shard}
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except SafetensorError as error:
        code = OS_ERROR_CODE.search(str(error))
        if code is None:
            raise
        raise OSError(int(code[1]), f"{os.strerror(int(code[1]))} ({error})", str(path)) from error
    path.chmod(0o666 & ~_umask())  # safetensors writes a private (0o600) temporary file and renames it


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
