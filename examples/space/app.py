"""Hugging Face Space entry point: the `convllava-demo` page for the model named by the environment.

CONVLLAVA_MODEL: a converted ConvLLaVA Hub id or folder (without it, the labelled random demo model);
CONVLLAVA_LOAD_IN_4BIT=1: quantize its language model to 4-bit; CONVLLAVA_CONCURRENCY: answers generated at once.
"""

import os

from convllava_hf.cli.web_demo import main


def space_arguments(environ=os.environ) -> list[str]:
    """`convllava-demo` arguments from a Space's variables; Spaces serve on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT."""
    argv = [
        "--host", environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        "--port", environ.get("GRADIO_SERVER_PORT", "7860"),
        "--concurrency", environ.get("CONVLLAVA_CONCURRENCY", "1"),
    ]
    if environ.get("CONVLLAVA_MODEL"):
        argv += ["--model", environ["CONVLLAVA_MODEL"]]
    if environ.get("CONVLLAVA_LOAD_IN_4BIT") == "1":
        argv.append("--load-in-4bit")
    return argv


if __name__ == "__main__":
    main(space_arguments())
