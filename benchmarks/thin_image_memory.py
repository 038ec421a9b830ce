"""
Peak memory and time of `ConvLlavaImageProcessor` (both modes) on 1xN and Nx1 PNGs, N up to PIL's pixel limit.

Each case runs in a fresh process: it decodes a single-colour PNG (a few hundred bytes however large N is) with
`open_image`, then preprocesses it. Peak RSS (`ru_maxrss`) and the time of each step are recorded; the decoded
image alone costs about 4 bytes per pixel, so that part grows with N by nature, the rest should not.

    python benchmarks/thin_image_memory.py [--resolution 1536] [--sizes 1000 10000 ...]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from _common import RESULTS_DIR, write_json

DEFAULT_SIZES = [1_000, 10_000, 20_000, 60_000, 1_000_000, 10_000_000, PIL.Image.MAX_IMAGE_PIXELS]


def measure(path: str, resolution: int, mode: str) -> dict:
    """Run in the child process: decode, preprocess, report times and peak RSS."""
    from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor, open_image

    processor = ConvLlavaImageProcessor(resolution=resolution, image_aspect_ratio=mode)
    start = time.perf_counter()
    image = open_image(path)
    decoded = time.perf_counter()
    rss_after_decode = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        processor(image, return_tensors="pt")
        refused = None
    except ValueError as error:
        refused = str(error)
    done = time.perf_counter()
    return {
        "refused": refused,
        "decode_s": decoded - start,
        "preprocess_s": done - decoded,
        "peak_rss_after_decode_mib": rss_after_decode / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(width: int, height: int, resolution: int, mode: str, folder: Path) -> dict:
    path = folder / f"{width}x{height}.png"
    PIL.Image.new("RGB", (width, height), (200, 30, 90)).save(path)
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--resolution", str(resolution), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = {"mode": mode, "width": width, "height": height, "png_bytes": path.stat().st_size, **json.loads(output)}
    path.unlink()
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1536)
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--modes", nargs="+", default=["pad", "preserve"])
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.resolution, args.mode)))
        return
    with tempfile.TemporaryDirectory() as folder:
        cases = [
            run_case(width, height, args.resolution, mode, Path(folder))
            for mode in args.modes
            for size in args.sizes
            for width, height in ((size, 1), (1, size))
        ]
    write_json(
        {"resolution": args.resolution, "pil_max_image_pixels": PIL.Image.MAX_IMAGE_PIXELS, "cases": cases},
        RESULTS_DIR / "thin_image_memory.json",
    )


if __name__ == "__main__":
    main()
