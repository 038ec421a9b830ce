"""`convllava-demo`: a web page to chat with ConvLLaVA about images (needs `pip install "convllava-hf[demo]"`)."""

import argparse
import sys

import PIL.Image

from .checkpoint import load_checkpoint
from .demo import DEMO_MODE_NOTICE, build_demo_model_and_processor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="convllava-demo", description=__doc__)
    parser.add_argument("--model", help="converted ConvLLaVA folder or Hub id; without it a random demo model is used")
    parser.add_argument(
        "--load-in-4bit", action="store_true", help="quantize the language model to 4-bit (bitsandbytes)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="answers generated at once; further requests wait in the queue"
    )
    parser.add_argument("--max-file-size", default="50mb", help="largest upload Gradio accepts (e.g. 20mb)")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=PIL.Image.MAX_IMAGE_PIXELS,
        help="images with more pixels are refused (default: Pillow's decompression-bomb limit)",
    )
    args = parser.parse_args(argv)
    if args.load_in_4bit and args.model is None:
        parser.error("--load-in-4bit needs --model (the random demo model is not quantized)")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    return args


def load_model_and_processor(model_id: str | None, load_in_4bit: bool = False):
    """The requested checkpoint, or the random demo model when `model_id` is None; a checkpoint that fails to load
    stops the command with the load error (it never falls back to the demo model)."""
    if model_id is None:
        return build_demo_model_and_processor()
    return load_checkpoint(model_id, "convllava-demo: could not load", load_in_4bit, device_map="auto")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model, args.load_in_4bit)
    try:
        from ..web.app import DemoApp
    except ImportError as error:
        raise SystemExit(f'convllava-demo needs Gradio: pip install "convllava-hf[demo]" ({error})') from error
    PIL.Image.MAX_IMAGE_PIXELS = args.max_image_pixels
    if args.model is None:
        print(f"*** {DEMO_MODE_NOTICE} ***", file=sys.stderr)
    DemoApp(model, processor, args.model).launch(args.host, args.port, args.max_file_size, args.concurrency)


if __name__ == "__main__":
    main()
