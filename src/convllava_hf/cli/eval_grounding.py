"""
`convllava-eval-grounding`: RefCOCO-style Precision@1 (IoU >= 0.5) of a ConvLLaVA checkpoint over a local JSONL of
`{"image", "sent", "bbox": [x1, y1, x2, y2], "width", "height"}` records, with the original's prompt and scoring.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..evaluation.loading import DTYPES, load_for_evaluation
from ..evaluation.refcoco import check_images, generate_answers, read_samples, score
from ..grounding import ASPECT_RATIO_MODES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted ConvLLaVA folder or Hub id")
    parser.add_argument("--data", type=Path, required=True, help="JSONL of referring expressions")
    parser.add_argument(
        "--image-folder", type=Path, help="folder the records' image paths are relative to (default: the data file's)"
    )
    parser.add_argument("--output", type=Path, help="write one JSON result per sample here (JSONL)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per generate call (the original used 1)")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--device-map", help='e.g. "cuda:0" or "auto"')
    parser.add_argument("--attn-implementation", help='e.g. "sdpa" or "flash_attention_2"')
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument("--load-in-4bit", action="store_true")
    quantization.add_argument("--load-in-8bit", action="store_true")
    parser.add_argument("--image-aspect-ratio", choices=ASPECT_RATIO_MODES, help="override the processor's mode")
    parser.add_argument("--resolution", type=int, help="override the processor's resolution")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size, --max-new-tokens and --limit must be positive.")
    if args.image_folder is None:
        args.image_folder = args.data.parent  # the rule of convllava-train's --image-folder
    return args


def write_jsonl_atomically(path: Path, rows: list[dict]) -> None:
    """Write `rows` to `path` through a temporary file in the same folder, so a failure leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as file:
        try:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        except BaseException:
            file.close()
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        samples = read_samples(args.data)[: args.limit]
        check_images(samples, args.image_folder)
        model, processor = load_for_evaluation(
            args.model,
            dtype=args.dtype,
            device_map=args.device_map,
            attn_implementation=args.attn_implementation,
            load_in_4bit=args.load_in_4bit,
            load_in_8bit=args.load_in_8bit,
            image_aspect_ratio=args.image_aspect_ratio,
            resolution=args.resolution,
        )
        answers = generate_answers(model, processor, samples, args.image_folder, args.batch_size, args.max_new_tokens)
    except (OSError, ValueError) as error:
        sys.exit(f"convllava-eval-grounding: {error}")
    precision, results = score(samples, answers, processor.image_processor.image_aspect_ratio)
    if args.output:
        write_jsonl_atomically(args.output, results)
    correct = sum(result["correct"] for result in results)
    print(json.dumps({"data": str(args.data), "precision@1": precision, "correct": correct, "total": len(results)}))


if __name__ == "__main__":
    main()
