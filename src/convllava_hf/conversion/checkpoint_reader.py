"""Lazy, tensor-by-tensor reading of PyTorch (`.bin`) and safetensors checkpoints, single-file or sharded."""

import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import load_state_dict_from_file
from safetensors import SafetensorError, safe_open

from .errors import ConversionError

#: Checkpoint layouts, most preferred first: (index file, single file).
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one stored tensor, and the file that holds it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


def find_weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """
    The weight files of a `save_pretrained`-style folder and the index's name -> file map (None without an index):
    the shards of a safetensors or `.bin` index, or the single `model.safetensors` / `pytorch_model.bin`
    (safetensors preferred when both formats are present).
    """
    for index_name, single_name in WEIGHT_LAYOUTS:
        index = folder / index_name
        if index.is_file():
            weight_map = read_weight_map(index)
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [file.name for file in files if not file.is_file()]
            if missing:
                raise ConversionError(f"{index} names shard files that do not exist: {', '.join(missing)}.")
            return files, weight_map
        if (folder / single_name).is_file():
            return [folder / single_name], None
    expected = ", ".join(name for layout in WEIGHT_LAYOUTS for name in layout)
    raise ConversionError(f"No weights in {folder}: expected one of {expected}.")


def read_weight_map(index: Path) -> dict[str, str]:
    """The name -> shard file map of a sharded checkpoint's index JSON, refusing an index that has none."""
    try:
        content = json.loads(index.read_text())
    except ValueError as error:
        raise ConversionError(f"{index} is not valid JSON: {error}") from error
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConversionError(f"{index} has no weight_map (a JSON object of tensor name -> shard file).")
    return weight_map


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """
    Every tensor of one weight file as memory-mapped views, read by `huggingface_hub.load_state_dict_from_file`:
    safetensors, or a `torch.save`d `.bin` with `weights_only=True` (never plain pickle).
    """
    is_bin = file.suffix != ".safetensors"
    try:
        state = load_state_dict_from_file(
            file, map_location="cpu", weights_only=True, mmap=is_bin and zipfile.is_zipfile(file), safe=not is_bin
        )
    except Exception as error:
        kind = "a weights-only PyTorch state dict" if is_bin else "safetensors"
        raise ConversionError(f"Cannot read {file} as {kind}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError(f"{file} does not hold a flat dict of name -> tensor.")
    return state


class CheckpointReader:
    """
    Every tensor of a set of weight files, by name. Shapes and dtypes are known up front (from the header of a
    safetensors file); `get` gives a memory-mapped view of one tensor, keeping at most one file open (read the names
    grouped by file to open each file once).
    """

    def __init__(self, files: Iterable[Path]):
        self.specs: dict[str, TensorSpec] = {}
        self._open_file: Path | None = None
        self._open_state: dict[str, torch.Tensor] = {}
        for file in files:
            for name, shape, dtype in self._read_specs(file):
                if name in self.specs:
                    raise ConversionError(f"Tensor {name!r} is stored twice: in {self.specs[name].file} and {file}.")
                self.specs[name] = TensorSpec(shape, dtype, file)

    @classmethod
    def from_folder(cls, folder: Path) -> "CheckpointReader":
        """A reader over the weights of a `save_pretrained`-style folder (see `find_weight_files`)."""
        files, weight_map = find_weight_files(folder)
        reader = cls(files)
        stored = {name: spec.file.name for name, spec in reader.specs.items()}
        if weight_map is not None and weight_map != stored:
            disagreeing = sorted(set(weight_map.items()) ^ set(stored.items()))[:5]
            raise ConversionError(
                f"The index in {folder} does not match its shards (disagreeing entries, up to 5): {disagreeing}."
            )
        return reader

    @staticmethod
    def _read_specs(file: Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        if file.suffix == ".safetensors":
            try:
                with safe_open(file, framework="pt") as handle:
                    slices = {name: handle.get_slice(name) for name in handle.keys()}
                    specs = [(name, tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()]
            except SafetensorError as error:
                raise ConversionError(f"{file} is truncated or corrupt: {error}") from error
            for name, _, code in specs:
                if code not in SAFETENSORS_DTYPES:
                    raise ConversionError(
                        f"Tensor {name!r} in {file} has dtype {code}, which is not supported "
                        f"(supported: {', '.join(SAFETENSORS_DTYPES)})."
                    )
            return [(name, shape, SAFETENSORS_DTYPES[code]) for name, shape, code in specs]
        return [(name, tuple(tensor.shape), tensor.dtype) for name, tensor in load_weights(file).items()]

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`: a memory-mapped view into its file."""
        file = self.specs[name].file
        if file != self._open_file:
            self.close()
            self._open_state, self._open_file = load_weights(file), file
        return self._open_state[name]

    def close(self) -> None:
        """Drop the open file, if any, so that its pages leave this process once no tensor of it is in use."""
        self._open_state, self._open_file = {}, None
