"""
`convllava-rewrite-tokenizer FOLDER...`: rewrite a saved folder's tokenizer as the original-exact one that
`convllava-convert` writes (for folders saved by an earlier convllava-hf, or holding Vicuna's plain Llama tokenizer).
"""

import argparse
import os
import sys
from collections.abc import Sequence

from transformers import AutoTokenizer

from ..whole_prompt_tokenizer import original_exact_tokenizer


def rewrite_tokenizer(folder: str | os.PathLike) -> bool:
    """Rewrite `folder`'s tokenizer files as their original-exact copy; False when they already are (or cannot be)."""
    exact = original_exact_tokenizer(AutoTokenizer.from_pretrained(folder))
    if exact is None:
        return False
    exact.save_pretrained(folder)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="convllava-rewrite-tokenizer", description=__doc__)
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="A saved or converted ConvLLaVA folder.")
    for folder in parser.parse_args(argv).folders:
        print(f"{folder}: {'rewritten' if rewrite_tokenizer(folder) else 'already original-exact, left as it is'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
