"""`convllava-chat`: ask a ConvLLaVA model about an image and stream the answer."""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch

from ..configuration_conv_llava import visual_token_grid
from ..grounding import ASPECT_RATIO_MODES
from ..image_files import open_image
from ..streamers import TimedTextStreamer
from .checkpoint import load_checkpoint
from .demo import DEMO_IMAGE, DEMO_MODE_NOTICE, build_demo_model_and_processor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, default=DEMO_IMAGE, help="image file (default: a bundled demo picture)")
    parser.add_argument("--prompt", default="What is in this image?", help="question about the image")
    parser.add_argument("--model", help="converted ConvLLaVA folder or Hub id; without it a random demo model is used")
    parser.add_argument(
        "--load-in-4bit", action="store_true", help="quantize the language model to 4-bit (bitsandbytes)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--image-aspect-ratio", choices=ASPECT_RATIO_MODES, help="override the processor's mode")
    return parser.parse_args(argv)


def load(model_id: str | None, load_in_4bit: bool):
    """The requested model and processor (exiting with the load error if they cannot be loaded), else the demo model."""
    if model_id is None:
        print(f"*** {DEMO_MODE_NOTICE} ***", file=sys.stderr)
        model, processor = build_demo_model_and_processor()
        if not load_in_4bit:
            return model, processor
        with tempfile.TemporaryDirectory(prefix="convllava-demo-") as folder:  # bitsandbytes quantizes on loading
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            return load(folder, load_in_4bit)
    return load_checkpoint(model_id, "convllava-chat: could not load --model", load_in_4bit)


def open_image_argument(path: Path) -> PIL.Image.Image:
    """The `--image` file decoded, or exit with a one-line error naming the problem."""
    try:
        return open_image(path)
    except ValueError as error:
        raise SystemExit(f"convllava-chat: --image: {error}") from error


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image = open_image_argument(args.image)  # before the model: a bad path fails in a moment
    model, processor = load(args.model, args.load_in_4bit)
    if args.image_aspect_ratio:
        processor.image_processor.image_aspect_ratio = args.image_aspect_ratio

    start = time.perf_counter()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
    preprocessed = time.perf_counter()
    height, width = inputs["image_sizes"][0].tolist()
    tokens = processor.image_processor.num_image_tokens(image.height, image.width)
    rows, cols = visual_token_grid(height, width)
    print(
        f"image {image.width}x{image.height} -> {width}x{height} pixels -> {tokens} visual tokens "
        f"({rows}x{cols}); prompt {inputs['input_ids'].shape[1]} tokens",
        file=sys.stderr,
    )

    streamer = TimedTextStreamer(processor.tokenizer, skip_special_tokens=True)
    print("ASSISTANT:", end=" ", flush=True)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer)
    first_token_s, decode_rate = (float("nan") if value is None else value for value in streamer.timings(preprocessed))
    print(
        f"preprocessing {1000 * (preprocessed - start):.0f} ms, time to first token {1000 * first_token_s:.0f} ms, "
        f"decoding {decode_rate:.1f} tokens/s ({len(streamer.token_times)} tokens)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
