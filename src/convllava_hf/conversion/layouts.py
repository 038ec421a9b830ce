"""
`convllava-convert-layout`: rewrite a converted ConvLLaVA folder between the two layouts, without the original.

* `fast_vlm` (the default of `convllava-convert`): transformers' own `FastVlmForConditionalGeneration` and
  `LlavaProcessor`; stock transformers, vLLM, TRL and the other tools load it with no package and no remote code.
* `conv_llava`: this package's `ConvLlavaForConditionalGeneration` and `ConvLlavaProcessor`, with their module files
  (`auto_map`), so it also loads with `trust_remote_code=True`.

The weights keep their names and bytes. Both layouts hold `ConvNextModel`'s pooling `layernorm` as identity weights
(never applied; vLLM refuses missing weights). A folder converted before it was written lacks it: the stock layout
adds it in a file of its own, and converting back removes exactly that, so a round trip gives back the same files.
"""

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save
from transformers import FastVlmConfig, LlavaImageProcessorPil, LlavaProcessor

from .. import stock_layout
from ..processing_conv_llava import ConvLlavaProcessor
from ..remote_code import add_remote_code
from .checkpoint_reader import CheckpointReader, TensorSpec
from .errors import ConversionError
from .model_card import replace_usage_section
from .safetensors_writer import INDEX_FILE, SINGLE_FILE
from .staged_output import check_output, staged_output

logger = logging.getLogger(__name__)

LAYOUTS = ("fast_vlm", "conv_llava")
MODEL_TYPES = {"fast_vlm": stock_layout.STOCK_MODEL_TYPE, "conv_llava": "conv_llava"}
#: The stock layout's identity final `layernorm` of the tower, in a file of its own.
LAYERNORM_FILE = "vision_tower_layernorm.safetensors"
LAYERNORM_KEYS = ("model.vision_tower.layernorm.weight", "model.vision_tower.layernorm.bias")
#: The single weights file of an unsharded folder, renamed in the stock layout so that the index (which lists the
#: layernorm file) is what transformers reads: it ignores the index next to a `model.safetensors`.
RENAMED_SINGLE_FILE = "model-00001-of-00001.safetensors"
#: Tokenizer init kwargs that loading a folder records; they are not settings of the tokenizer.
LOADING_KWARGS = ("is_local", "local_files_only")
#: The module files `add_remote_code` copies (a conv_llava folder's code); the stock layout needs none.
PACKAGE_MODULES = frozenset(path.name for path in Path(stock_layout.__file__).parent.glob("*.py"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"Cannot read {path}: {error}") from error


def _write_json(path: Path, content: dict) -> None:
    """Write `content` as transformers writes configs (the caller's folder is a staging copy: no partial output)."""
    path.unlink(missing_ok=True)  # a new file, whose mode follows the umask
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def folder_layout(folder: Path) -> str:
    """`"fast_vlm"` or `"conv_llava"`, from `folder/config.json`; raises for any other folder."""
    model_type = _read_json(folder / "config.json").get("model_type")
    for layout, expected in MODEL_TYPES.items():
        if model_type == expected:
            return layout
    raise ConversionError(
        f"{folder}/config.json has model_type {model_type!r}: not a converted ConvLLaVA folder (fast_vlm or "
        "conv_llava). Convert an original checkpoint with convllava-convert."
    )


def _stored_bytes(specs: dict[str, TensorSpec]) -> dict[str, int]:
    """Bytes of each stored tensor."""
    return {name: torch.Size(spec.shape).numel() * spec.dtype.itemsize for name, spec in specs.items()}


def _add_identity_layernorm(folder: Path, config: dict) -> None:
    """Write the tower's final `layernorm` as weight 1, bias 0 (in the tower's dtype) and list it in the index."""
    specs = CheckpointReader.from_folder(folder).specs
    if any(key in specs for key in LAYERNORM_KEYS):
        return  # the folder already carries a final layernorm (e.g. saved by stock transformers)
    if (folder / INDEX_FILE).is_file():
        index = _read_json(folder / INDEX_FILE)
    else:
        (folder / SINGLE_FILE).rename(folder / RENAMED_SINGLE_FILE)
        total_size = sum(_stored_bytes(specs).values())
        index = {"metadata": {"total_size": total_size}, "weight_map": dict.fromkeys(specs, RENAMED_SINGLE_FILE)}
    dtype = next(spec.dtype for name, spec in specs.items() if name.startswith("model.vision_tower."))
    width = config["vision_config"]["hidden_sizes"][-1]
    tensors = {LAYERNORM_KEYS[0]: torch.ones(width, dtype=dtype), LAYERNORM_KEYS[1]: torch.zeros(width, dtype=dtype)}
    (folder / LAYERNORM_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))
    index["weight_map"].update(dict.fromkeys(tensors, LAYERNORM_FILE))
    index["metadata"]["total_size"] += sum(tensor.nbytes for tensor in tensors.values())
    _write_json(folder / INDEX_FILE, index)


def _remove_identity_layernorm(folder: Path) -> None:
    """Undo `_add_identity_layernorm`; a layernorm stored inside the other weights is kept (the package ignores it)."""
    if not (folder / LAYERNORM_FILE).is_file():
        return
    index = _read_json(folder / INDEX_FILE)
    sizes = _stored_bytes(CheckpointReader([folder / LAYERNORM_FILE]).specs)
    for key in sizes:
        del index["weight_map"][key]
    index["metadata"]["total_size"] -= sum(sizes.values())
    (folder / LAYERNORM_FILE).unlink()
    if set(index["weight_map"].values()) == {RENAMED_SINGLE_FILE}:
        (folder / RENAMED_SINGLE_FILE).rename(folder / SINGLE_FILE)
        (folder / INDEX_FILE).unlink()
    else:
        _write_json(folder / INDEX_FILE, index)


def _stock_processor(folder: Path) -> LlavaProcessor:
    """The folder's tokenizer and chat template with the `LlavaProcessor` settings of its `pad` pipeline."""
    processor = ConvLlavaProcessor.from_pretrained(folder)
    settings = stock_layout.to_stock_image_processor(processor.image_processor.to_dict())
    settings.pop("image_processor_type")
    image_processor = LlavaImageProcessorPil(**settings)
    for key in (*LOADING_KWARGS, "auto_map"):  # `auto_map` names the package's code, which a stock folder lacks
        processor.tokenizer.init_kwargs.pop(key, None)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        **stock_layout.STOCK_PROCESSOR_SETTINGS,
    )


def rewrite_as_fast_vlm(folder: Path) -> None:
    """Rewrite a `conv_llava` folder in place as a stock `fast_vlm` one; raises naming a setting it cannot express."""
    config = _read_json(folder / "config.json")
    try:
        stock_config = stock_layout.to_stock_config(config)
        processor = _stock_processor(folder)
    except stock_layout.StockLayoutError as error:
        raise ConversionError(f"{folder} cannot be written in the fast_vlm layout: {error}") from error
    FastVlmConfig.from_dict(stock_config)  # stock transformers must accept it
    _write_json(folder / "config.json", stock_config)
    for stale in ("processor_config.json", "tokenizer_config.json"):
        (folder / stale).unlink(missing_ok=True)
    processor.save_pretrained(folder)
    _add_identity_layernorm(folder, config)
    for module in PACKAGE_MODULES:
        (folder / module).unlink(missing_ok=True)
    replace_usage_section(folder / "README.md", "fast_vlm")


def rewrite_as_conv_llava(folder: Path) -> None:
    """Rewrite a stock `fast_vlm` ConvLLaVA folder in place in this package's layout, with its remote code."""
    try:
        config = stock_layout.from_stock_config(_read_json(folder / "config.json"), str(folder / "config.json"))
        processor = ConvLlavaProcessor.from_pretrained(folder)
    except stock_layout.StockLayoutError as error:
        raise ConversionError(str(error)) from error
    for key in LOADING_KWARGS:
        processor.tokenizer.init_kwargs.pop(key, None)
    _write_json(folder / "config.json", config)
    for stale in ("processor_config.json", "tokenizer_config.json"):
        (folder / stale).unlink(missing_ok=True)
    processor.save_pretrained(folder)
    _remove_identity_layernorm(folder)
    add_remote_code(folder)
    replace_usage_section(folder / "README.md", "conv_llava")


REWRITES = {"fast_vlm": rewrite_as_fast_vlm, "conv_llava": rewrite_as_conv_llava}


def convert_layout(source: Path, output: Path, layout: str, force: bool = False) -> Path:
    """
    Write `source` (a converted folder) into `output` in `layout`, via a staging copy moved into place when complete.
    A folder already in `layout` is refused and nothing is written. Returns `output`.
    """
    source, output = Path(source), Path(output)
    if layout not in LAYOUTS:
        raise ConversionError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if not source.is_dir():
        raise ConversionError(f"{source} is not a folder.")
    current = folder_layout(source)
    if current == layout:
        raise ConversionError(f"{source} is already in the {layout} layout; nothing to convert, nothing written.")
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise ConversionError(f"--output {output} must be outside {source}.")
    check_output(output, force)
    with staged_output(output, force) as staging:
        for file in sorted(source.iterdir()):
            if file.is_file():
                (staging / file.name).write_bytes(file.read_bytes())
        REWRITES[layout](staging)
    logger.info("Wrote %s in the %s layout (from the %s layout of %s).", output, layout, current, source)
    return output


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="convllava-convert-layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="A folder written by convllava-convert (either layout).")
    parser.add_argument("output", type=Path, help="Folder to write (must be empty or absent).")
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="The layout to write.")
    parser.add_argument("--force", action="store_true", help="Replace the contents of a non-empty output.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for input it refuses)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(f"Written to {convert_layout(args.source, args.output, args.layout, args.force)}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
