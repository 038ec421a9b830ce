"""
Benchmark 3: images/s of `ConvLlavaImageProcessor` (pad mode) vs the original ConvLLaVA/LLaVA recipe
(`expand2square` with the mean colour, then transformers' `CLIPImageProcessor`, one image at a time, then
`torch.stack`), on the same 50 generated RGB images of mixed sizes, in the same run; outputs must be identical.

Rounds run every variant once, in turn; throughput uses the median time over rounds, the speed-up is the median of
per-round ratios.

    python benchmarks/preprocessing_throughput.py [--resolutions 768 1536] [--rounds 3]
    python benchmarks/preprocessing_throughput.py --images 3 --resolutions 64 --rounds 1 --output /tmp/pre.json  # smoke
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from _common import RESULTS_DIR, write_json
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor

NUM_IMAGES = 50


def generated_images(count: int = NUM_IMAGES, seed: int = 0) -> list[PIL.Image.Image]:
    """RGB noise images with sides in [120, 2200] px: landscapes, portraits, a few squares, some below 768 px."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = (int(side) for side in rng.integers(120, 2200, size=2))
        if index % 10 == 0:
            height = width
        images.append(PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)))
    return images


def expand2square(image: PIL.Image.Image, background: tuple[int, ...]) -> PIL.Image.Image:
    """The original `llava.mm_utils.expand2square`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = PIL.Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def original_recipe(processor: CLIPImageProcessorPil, images: list[PIL.Image.Image]) -> torch.Tensor:
    """The original `process_images` for `image_aspect_ratio == "pad"`."""
    background = tuple(int(x * 255) for x in processor.image_mean)
    squares = (expand2square(image, background) for image in images)
    return torch.stack([processor.preprocess(square, return_tensors="pt")["pixel_values"][0] for square in squares])


def run(resolution: int, images: list[PIL.Image.Image], rounds: int) -> dict:
    ours = ConvLlavaImageProcessor(resolution=resolution, image_aspect_ratio="pad")
    clip = CLIPImageProcessorPil(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        resample=PIL.Image.BICUBIC,
        image_mean=ours.image_mean,
        image_std=ours.image_std,
    )
    functions = {
        "original": lambda: original_recipe(clip, images),
        "ours": lambda: ours(images, return_tensors="pt")["pixel_values"],
    }
    times: dict[str, list[float]] = {name: [] for name in functions}
    outputs = {}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, function in functions.items():
            start = time.perf_counter()
            outputs[name] = function()
            if round_index:
                times[name].append(time.perf_counter() - start)
        if round_index:
            print(f"  round {round_index}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    results = {}
    for name in functions:
        median = statistics.median(times[name])
        results[name] = {
            "median_s": median,
            "runs_s": times[name],
            "images_per_s": len(images) / median,
            "speedup_vs_original": statistics.median(o / t for o, t in zip(times["original"], times[name])),
            "identical_to_original": torch.equal(outputs[name], outputs["original"]),
        }
        print(
            f"  {name:9s} {results[name]['images_per_s']:6.1f} images/s  x{results[name]['speedup_vs_original']:.2f}  "
            f"identical: {results[name]['identical_to_original']}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[768, 1536])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--images", type=int, default=NUM_IMAGES, help="generated images (fewer for a smoke test)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "preprocessing_throughput.json")
    args = parser.parse_args()

    images = generated_images(args.images)
    payload = {
        "images": {"count": len(images), "sizes_wxh": [image.size for image in images]},
        "load_average_start": os.getloadavg(),
        "resolutions": {},
    }
    for resolution in args.resolutions:
        print(f"{resolution}x{resolution}:")
        payload["resolutions"][str(resolution)] = run(resolution, images, args.rounds)
    payload["load_average_end"] = os.getloadavg()
    write_json(payload, args.output)


if __name__ == "__main__":
    main()
