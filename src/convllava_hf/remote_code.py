"""
`convllava-add-remote-code`: make a saved ConvLLaVA folder load with `trust_remote_code=True` where this package is not
installed, e.g. one written by a version of convllava-hf that did not save its code. (This module is tooling; it is
not one of the module files copied into folders.)
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save

from .configuration_conv_llava import CONVLLAVA_CODE_VERSION, MODEL_AUTO_MAP, ConvLlavaConfig
from .image_processing_conv_llava import ConvLlavaImageProcessor
from .modeling_conv_llava import ConvLlavaForConditionalGeneration
from .processing_conv_llava import ConvLlavaProcessor


class RemoteCodeError(ValueError):
    """A folder that is not a ConvLLaVA folder this package can add remote code to."""


def _reference(cls: type) -> str:
    """`module.Class`, as transformers writes it in `auto_map`."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RemoteCodeError(f"Cannot read {path}: {error}") from error


def _file_mode(path: Path) -> int:
    """The permissions of `path` if it exists, else those a new file gets under the umask (as `save_pretrained`'s)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _write_json(path: Path, content: dict) -> None:
    """
    Replace `path` atomically (a temporary sibling moved into place), formatted as transformers writes configs, with
    the permissions of the file it replaces (not the temporary file's 0600).
    """
    mode = _file_mode(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as file:
        file.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.chmod(file.name, mode)
    os.replace(file.name, path)


def _with_auto_map(content: dict, entries: dict[str, str]) -> dict:
    return {**content, "auto_map": {**content.get("auto_map", {}), **entries}}


def add_remote_code(folder: str | os.PathLike) -> list[Path]:
    """
    Copy this package's module files into `folder` and name them in the `auto_map` of its `config.json` (config and
    every model Auto class) and `processor_config.json` (processor, and the image processor inside it), as
    `save_pretrained` does for a registered class. Weights, tokenizer and the other settings are left as they are.
    Returns the files written. Raises `RemoteCodeError` for a folder without a ConvLLaVA config or processor, or
    with a config newer than this package.
    """
    folder = Path(folder)
    config_file, processor_file = folder / "config.json", folder / "processor_config.json"
    if not config_file.is_file() and not processor_file.is_file():
        raise RemoteCodeError(f"{folder} holds neither a config.json nor a processor_config.json.")
    config = _read_json(config_file) if config_file.is_file() else None
    processor = _read_json(processor_file) if processor_file.is_file() else None
    if config is not None:
        if config.get("model_type") != ConvLlavaConfig.model_type:
            raise RemoteCodeError(
                f"{config_file} has model_type {config.get('model_type')!r}, not {ConvLlavaConfig.model_type!r}."
            )
        try:
            ConvLlavaConfig.from_pretrained(folder)  # the copied code must understand this config
        except ValueError as error:
            raise RemoteCodeError(f"{config_file} cannot be loaded by this convllava-hf: {error}") from error
    if processor is not None and processor.get("processor_class") != ConvLlavaProcessor.__name__:
        raise RemoteCodeError(
            f"{processor_file} has processor_class {processor.get('processor_class')!r}, "
            f"not {ConvLlavaProcessor.__name__!r}."
        )

    processor_entry = {"AutoProcessor": _reference(ConvLlavaProcessor)}
    image_processor_entry = {"AutoImageProcessor": _reference(ConvLlavaImageProcessor), **processor_entry}
    written = []
    if config is not None:
        written += custom_object_save(ConvLlavaForConditionalGeneration, folder)
        entries = {"AutoConfig": _reference(ConvLlavaConfig), **MODEL_AUTO_MAP}
        _write_json(config_file, {**_with_auto_map(config, entries), "convllava_code_version": CONVLLAVA_CODE_VERSION})
        written.append(config_file)
    if processor is not None:
        written += custom_object_save(ConvLlavaProcessor, folder)
        if isinstance(processor.get("image_processor"), dict):
            processor["image_processor"] = _with_auto_map(processor["image_processor"], image_processor_entry)
        _write_json(processor_file, _with_auto_map(processor, processor_entry))
        written.append(processor_file)
    image_processor_file = folder / "preprocessor_config.json"
    if image_processor_file.is_file():
        image_processor = _read_json(image_processor_file)
        if image_processor.get("image_processor_type") == ConvLlavaImageProcessor.__name__:
            written += custom_object_save(ConvLlavaImageProcessor, folder)
            entry = {"AutoImageProcessor": _reference(ConvLlavaImageProcessor)}
            _write_json(image_processor_file, _with_auto_map(image_processor, entry))
            written.append(image_processor_file)
    return sorted(set(written))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for a folder it refuses)."""
    parser = argparse.ArgumentParser(prog="convllava-add-remote-code", description=__doc__)
    parser.add_argument(
        "folders", nargs="+", type=Path, metavar="FOLDER", help="A saved or converted ConvLLaVA folder."
    )
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            written = add_remote_code(folder)
        except RemoteCodeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{folder}: wrote {', '.join(path.name for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
