"""
Grounding boxes of ConvLLaVA: `[x1, y1, x2, y2]` answers to pixels of the original image and back.

The released models were instruction-tuned on LLaVA-1.5 data, whose boxes are written `[0.12, 0.34, 0.56, 0.78]`:
corner coordinates normalised to the image as the model saw it. In `"pad"` mode (the released models) that is the
image padded to a square of side `max(height, width)`, the content centred with an offset of
`(long - short) // 2` pixels along the short side; in `"preserve"` mode it is the image itself. Like the original's
`llava/eval/evaluate_grounding.py`, values are divided by 1000 when their sum is >= 4 (answers on a 0-1000 grid).

Self-contained (standard library only) so that it can also ship as Hub remote code.
"""

import math
import operator
import re
from collections.abc import Sequence

from .image_processing_conv_llava import ASPECT_RATIO_MODES

Box = tuple[float, float, float, float]

REFERRING_EXPRESSION_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def parse_box(text: str) -> Box | None:
    """
    The box of a model answer, normalised to [0, 1]: the first bracketed list of `text`, when it holds exactly four
    numbers `x1, y1, x2, y2` with no negative value, `x1 <= x2` and `y1 <= y2`; values summing to >= 4 are divided
    by 1000. Anything else (no brackets, 3 or 5 numbers, words, NaN, a negative or reversed box) gives `None`.
    """
    match = _BRACKETED.search(text) if isinstance(text, str) else None
    if match is None:
        return None
    fields = [field.strip() for field in match.group(1).split(",")]
    if len(fields) != 4 or not all(_NUMBER.fullmatch(field) for field in fields):
        return None
    values = [float(field) for field in fields]
    if not all(math.isfinite(value) and value >= 0 for value in values):
        return None
    if sum(values) >= 4:
        values = [value / 1000 for value in values]
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return None
    return x1, y1, x2, y2


def _frame(image_size: Sequence[int], image_aspect_ratio: str) -> tuple[int, int, int, int]:
    """(frame width, frame height, x offset, y offset) of the image inside the frame the box is normalised to."""
    if image_aspect_ratio not in ASPECT_RATIO_MODES:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIO_MODES}, got {image_aspect_ratio!r}.")
    try:
        height, width = (operator.index(side) for side in image_size)
    except (TypeError, ValueError):
        height = width = 0
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be the image's (height, width) as positive integers, got {image_size!r}.")
    if image_aspect_ratio == "preserve":
        return width, height, 0, 0
    side = max(height, width)
    return side, side, (side - width) // 2, (side - height) // 2


def box_to_pixels(
    box_or_text: Box | Sequence[float] | str | None,
    image_size: Sequence[int],
    image_aspect_ratio: str = "pad",
    clip: bool = True,
) -> Box | None:
    """
    Pixel corners `(x1, y1, x2, y2)` in the original image of a normalised box or of a model answer (parsed with
    [`parse_box`]; `None` when it holds no valid box).

    Args:
        box_or_text: a normalised box, or the model's answer.
        image_size: the ORIGINAL image's `(height, width)`.
        image_aspect_ratio: `"pad"` (the box is relative to the padded square) or `"preserve"` (to the image).
        clip: clip the corners to the image. The original evaluation does not (its boxes may reach into the
            padding); [`convllava_hf.evaluate_grounding`] passes `clip=False` to reproduce its numbers.
    """
    box = parse_box(box_or_text) if isinstance(box_or_text, str) else box_or_text
    if box is None:
        return None
    frame_width, frame_height, x_offset, y_offset = _frame(image_size, image_aspect_ratio)
    x1, y1, x2, y2 = box
    corners = (
        x1 * frame_width - x_offset,
        y1 * frame_height - y_offset,
        x2 * frame_width - x_offset,
        y2 * frame_height - y_offset,
    )
    if not clip:
        return corners
    height, width = (operator.index(side) for side in image_size)
    return (
        min(max(corners[0], 0.0), width),
        min(max(corners[1], 0.0), height),
        min(max(corners[2], 0.0), width),
        min(max(corners[3], 0.0), height),
    )


def pixels_to_box(box: Sequence[float], image_size: Sequence[int], image_aspect_ratio: str = "pad") -> Box:
    """The normalised box (what the model reads and writes) of pixel corners `(x1, y1, x2, y2)` of the image."""
    if len(box) != 4 or not all(math.isfinite(value) for value in box) or box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box must be finite pixel corners (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, got {box!r}.")
    frame_width, frame_height, x_offset, y_offset = _frame(image_size, image_aspect_ratio)
    x1, y1, x2, y2 = box
    return (
        (x1 + x_offset) / frame_width,
        (y1 + y_offset) / frame_height,
        (x2 + x_offset) / frame_width,
        (y2 + y_offset) / frame_height,
    )


def pixels_to_box_text(
    box: Sequence[float], image_size: Sequence[int], image_aspect_ratio: str = "pad", decimals: int = 2
) -> str:
    """
    The model's text form of pixel corners `(x1, y1, x2, y2)` of the original image, e.g. `"[0.12, 0.34, 0.56, 0.78]"`
    (LLaVA-1.5's training format: `decimals` places, the inverse of [`box_to_pixels`]).
    """
    return (
        "[" + ", ".join(f"{value:.{decimals}f}" for value in pixels_to_box(box, image_size, image_aspect_ratio)) + "]"
    )


def box_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two `(x1, y1, x2, y2)` boxes; 0 when the union is empty."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    union -= intersection
    return intersection / union if union > 0 else 0.0


def post_process_grounding(
    texts: Sequence[str], image_sizes: Sequence[Sequence[int]], image_aspect_ratio: str = "pad", clip: bool = True
) -> list[Box | None]:
    """[`box_to_pixels`] of each answer with its original image's `(height, width)`; `None` where it holds no box."""
    if len(texts) != len(image_sizes):
        raise ValueError(f"Got {len(texts)} texts but {len(image_sizes)} image sizes; give one (height, width) each.")
    return [box_to_pixels(text, size, image_aspect_ratio, clip) for text, size in zip(texts, image_sizes)]
