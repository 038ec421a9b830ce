"""What a `--model` names when it cannot be loaded: an original (unconverted) ConvLLaVA folder, or no local folder."""

import json
import os
import shlex
from pathlib import Path

#: The class name the original ConvLLaVA (LLaVA) code saves in `config.json`.
ORIGINAL_ARCHITECTURE = "LlavaLlamaForCausalLM"


class UnconvertedCheckpointError(ValueError):
    """A folder holding an original ConvLLaVA checkpoint (LLaVA layout), which must be converted before loading."""


def convert_command(folder: str | os.PathLike) -> str | None:
    """
    The `convllava-convert` command for a local folder holding an original ConvLLaVA checkpoint (LLaVA layout: a
    `config.json` naming `mm_vision_tower` or `LlavaLlamaForCausalLM`), else None.
    """
    folder = Path(folder).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    if "mm_vision_tower" not in config and ORIGINAL_ARCHITECTURE not in architectures:
        return None
    output = folder.resolve().parent / f"{folder.resolve().name}-hf"
    command = ["convllava-convert", "--llm", str(folder), "--output", str(output)]
    if not (folder / "vision_tower" / "config.json").is_file() and config.get("mm_vision_tower"):
        command += ["--vision", str(config["mm_vision_tower"])]  # what the converter would use by default
    return shlex.join(command)


def check_converted(model: str | os.PathLike, name: str = "--model") -> None:
    """
    Raise `UnconvertedCheckpointError` for an original ConvLLaVA folder: `"{name} {model!r}: it holds ..."`, with the
    command that converts it.
    """
    command = convert_command(model)
    if command is not None:
        raise UnconvertedCheckpointError(
            f"{name} {str(model)!r}: it holds an original ConvLLaVA checkpoint (LLaVA layout), not a converted one. "
            f"Convert it, then pass the output: {command}"
        )


def load_failure(model: str | os.PathLike, error: Exception) -> str:
    """The load `error`, saying first, when `model` is no existing path, that it was tried as a Hub id."""
    if os.path.exists(model):
        return f"{type(error).__name__}: {error}"
    return (
        f"no local folder {str(model)!r} exists, so it was tried as a Hub model id, which failed: "
        f"{type(error).__name__}: {error}"
    )
