"""Local folders or Hugging Face Hub repositories holding the original checkpoint."""

from pathlib import Path

import sentencepiece
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError

from .errors import ConversionError

#: Everything a conversion reads besides the weights.
NON_WEIGHT_PATTERNS = ["*.json", "tokenizer.model"]


def resolve_source(path_or_repo_id: str, option: str) -> Path:
    """
    A local folder as is, or a Hub repository downloaded to the cache (configs, tokenizer and one weight format:
    safetensors when the repository has them, otherwise `.bin`).
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{option} {path_or_repo_id} is a file; give the checkpoint folder.")
    try:
        folder = Path(snapshot_download(path_or_repo_id, allow_patterns=[*NON_WEIGHT_PATTERNS, "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(path_or_repo_id, allow_patterns=[*NON_WEIGHT_PATTERNS, "*.bin"]))
        return folder
    except (HFValidationError, OSError, ValueError) as error:
        raise ConversionError(
            f"{option} {path_or_repo_id!r} is neither a local folder nor a downloadable Hub repository: {error}"
        ) from error


def default_vision_source(llm_dir: Path, llm_config: dict) -> str:
    """
    Where the original finds the vision tower: the `vision_tower/` folder the training script saves next to the
    LLM weights, else the config's `mm_vision_tower` (a Hub id for the released models).
    """
    if (llm_dir / "vision_tower" / "config.json").is_file():
        return str(llm_dir / "vision_tower")
    if not llm_config.get("mm_vision_tower"):
        raise ConversionError("The LLM config.json names no mm_vision_tower; pass --vision.")
    return llm_config["mm_vision_tower"]


def check_sentencepiece_model(folder: Path) -> None:
    """Refuse an LLM folder whose `tokenizer.model` (the original sentencepiece tokenizer) is missing or unreadable."""
    path = folder / "tokenizer.model"
    if not path.is_file():
        raise ConversionError(f"{path} is missing: the original checkpoint's sentencepiece tokenizer is needed.")
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as error:
        raise ConversionError(f"{path} is not a valid sentencepiece model: {error}") from error
