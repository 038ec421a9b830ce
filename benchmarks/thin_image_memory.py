"""
Peak memory and time of `ConvLlavaImageProcessor` (both modes) on 1xN and Nx1 PNGs, N up to PIL's pixel limit.

Each case runs in a fresh process: it decodes a single-colour PNG (a few hundred bytes however large N is) with
`open_image`, then preprocesses it. Peak RSS (`VmHWM`) and the time of each step are recorded; the decoded
image alone costs about 4 bytes per pixel, so that part grows with N by nature, the rest should not.

    python benchmarks/thin_image_memory.py [--resolution 1536] [--sizes 1000 10000 ...]
    python benchmarks/thin_image_memory.py --resolution 128 --sizes 1000 --modes preserve --output /tmp/thin.json
"""

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import PIL.Image

from _common import RESULTS_DIR, write_json
from convllava_hf.grounding import ASPECT_RATIO_MODES

DEFAULT_SIZES = [1_000, 20_000, 60_000, 1 << 20, 10_000_000, PIL.Image.MAX_IMAGE_PIXELS]


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which a child inherits)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, resolution: int, mode: str) -> dict:
    """Run in the child process: decode, preprocess, report times and peak RSS."""
    from convllava_hf.image_files import open_image
    from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor

    processor = ConvLlavaImageProcessor(resolution=resolution, image_aspect_ratio=mode)
    start = time.perf_counter()
    try:
        image = open_image(path)
    except ValueError as error:  # Pillow's PNG decoder cannot hold the widest rows
        return {"decode_error": str(error), "peak_rss_mib": peak_rss_mib()}
    decoded = time.perf_counter()
    rss_after_decode = peak_rss_mib()
    try:
        image_sizes = processor(image, return_tensors="pt")["image_sizes"][0].tolist()
        refused = None
    except ValueError as error:
        image_sizes, refused = None, str(error)
    done = time.perf_counter()
    return {
        "refused": refused,
        "image_sizes": image_sizes,
        "decode_s": decoded - start,
        "preprocess_s": done - decoded,
        "peak_rss_after_decode_mib": rss_after_decode,
        "peak_rss_mib": peak_rss_mib(),
    }


def write_single_colour_png(path: Path, width: int, height: int, colour: tuple[int, int, int]) -> None:
    """An RGB PNG of one colour, streamed in IDAT chunks (Pillow's encoder cannot hold a 89-million-pixel row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(colour) * width  # filter type 0, then the pixels
    rows_per_block = max(1, (1 << 24) // len(row))
    compressor = zlib.compressobj(9)
    with path.open("wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for begin in range(0, height, rows_per_block):
            if data := compressor.compress(row * min(rows_per_block, height - begin)):
                file.write(chunk(b"IDAT", data))
        file.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))


def run_case(width: int, height: int, resolution: int, mode: str, folder: Path) -> dict:
    path = folder / f"{width}x{height}.png"
    write_single_colour_png(path, width, height, (200, 30, 90))
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
    parser.add_argument("--modes", nargs="+", default=list(ASPECT_RATIO_MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "thin_image_memory.json")
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
        args.output,
    )


if __name__ == "__main__":
    main()
