"""The original-tiny fixture converted by the command-line converter, for end-to-end evaluation tests."""

import os
import subprocess
import sys
from pathlib import Path

from tiny_models import FIXTURE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)


def convert_original_tiny(output: Path, layout: str = "fast_vlm") -> Path:
    """
    Convert the fixture into `output` in `layout` (`"fast_vlm"`, the converter's default, or `"conv_llava"`) in a
    fresh, offline process, as a user would; returns `output`.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, str(REPO_ROOT / "conversion" / "convert_convllava_to_hf.py"),
        "--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output", str(output),
        "--layout", layout,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"Converting the fixture failed:\n{result.stderr}")
    return output


def vicuna_prompt(question: str, with_image: bool = True) -> str:
    """The Vicuna v1 prompt of one user turn, written out by hand (independent of the chat template)."""
    image = "<image>\n" if with_image else ""
    return f"{VICUNA_SYSTEM} USER: {image}{question} ASSISTANT:"
