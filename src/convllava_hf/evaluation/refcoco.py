"""
RefCOCO-style referring-expression grounding, scored like the original `llava/eval/evaluate_grounding.py`:
Precision@1, the share of answers whose box has IoU >= 0.5 with the ground truth.

Data: a JSONL file, one `{"image": path, "sent": expression, "bbox": [x1, y1, x2, y2], "width": w, "height": h}`
per line (the format of the original's `refcoco_val.jsonl` etc.; `bbox` in pixels of the original image, `image`
relative to an image folder).
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..grounding import REFERRING_EXPRESSION_PROMPT, box_iou, box_to_pixels
from ..image_files import open_image

IOU_THRESHOLD = 0.5
REQUIRED_KEYS = ("image", "sent", "bbox", "width", "height")


@dataclass(frozen=True)
class GroundingSample:
    """One referring expression: its image (path), sentence, ground-truth pixel box and the image's size."""

    image: str
    sentence: str
    bbox: tuple[float, float, float, float]
    width: int
    height: int


def read_samples(path: str | os.PathLike) -> list[GroundingSample]:
    """The samples of a JSONL file; `ValueError` naming the line of the first malformed record."""
    samples = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                samples.append(_parse_record(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: {error}") from error
    if not samples:
        raise ValueError(f"{path} holds no samples.")
    return samples


def _parse_record(record: dict) -> GroundingSample:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}.")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"missing {missing}; each record needs {list(REQUIRED_KEYS)}.")
    bbox = record["bbox"]
    valid_box = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(value, (int, float)) and math.isfinite(value) for value in bbox)
        and bbox[0] <= bbox[2]
        and bbox[1] <= bbox[3]
    )
    if not valid_box:
        raise ValueError(f"bbox must be [x1, y1, x2, y2] pixels with x1 <= x2 and y1 <= y2, got {bbox!r}.")
    width, height = record["width"], record["height"]
    if not all(isinstance(side, int) and side > 0 for side in (width, height)):
        raise ValueError(f"width and height must be positive integers, got {width!r} and {height!r}.")
    if not isinstance(record["image"], str) or not isinstance(record["sent"], str):
        raise ValueError("image and sent must be strings.")
    return GroundingSample(record["image"], record["sent"], tuple(float(value) for value in bbox), width, height)


def grounding_prompt(processor, sentence: str) -> str:
    """The original's prompt, `<image>\\nPlease provide the bounding box ...: {sentence}.`, in the chat template."""
    content = [{"type": "image"}, {"type": "text", "text": REFERRING_EXPRESSION_PROMPT.format(sentence)}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def check_images(samples: Sequence[GroundingSample], image_folder: str | os.PathLike) -> None:
    """Fail fast, before any generation: every image exists and has its record's size (headers only are read)."""
    for sample in samples:
        path = Path(image_folder) / sample.image
        if not path.is_file():
            raise ValueError(f"Image {str(path)!r} of sample {sample.sentence!r} does not exist.")
        try:
            with PIL.Image.open(path) as image:
                size = image.size
        except (OSError, SyntaxError) as error:
            raise ValueError(f"Could not read {str(path)!r}: {error}") from error
        if size != (sample.width, sample.height):
            raise ValueError(
                f"{str(path)!r} is {size[0]}x{size[1]} pixels but its record says {sample.width}x{sample.height}."
            )


def load_sample_image(sample: GroundingSample, image_folder: str | os.PathLike) -> PIL.Image.Image:
    """
    The sample's image as RGB pixels in stored order, checked against the record's size. Like the original loader
    (`Image.open(...).convert("RGB")`) the EXIF orientation is not applied: the boxes are in stored pixels.
    """
    path = Path(image_folder) / sample.image
    if not path.is_file():
        raise ValueError(f"Image {str(path)!r} of sample {sample.sentence!r} does not exist.")
    image = PIL.Image.fromarray(np.asarray(open_image(path).convert("RGB")))
    if image.size != (sample.width, sample.height):
        raise ValueError(
            f"{str(path)!r} is {image.width}x{image.height} pixels but its record says {sample.width}x{sample.height}."
        )
    return image


def generate_answers(
    model,
    processor,
    samples: Sequence[GroundingSample],
    image_folder: str | os.PathLike,
    batch_size: int = 1,
    max_new_tokens: int = 100,
) -> list[str]:
    """Greedy answers (the original's decoding: `do_sample=False`, 100 new tokens) in batches, padded on the left."""
    answers = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        inputs = processor(
            images=[load_sample_image(sample, image_folder) for sample in batch],
            text=[grounding_prompt(processor, sample.sentence) for sample in batch],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def score(
    samples: Sequence[GroundingSample], answers: Sequence[str], image_aspect_ratio: str = "pad"
) -> tuple[float, list[dict]]:
    """
    Precision@1 and one result per sample (`pred_bbox` in pixels, `iou`, `correct`). Predicted boxes are not clipped
    to the image, as in the original; an answer without a valid box is a miss.
    """
    if len(samples) != len(answers):
        raise ValueError(f"Got {len(answers)} answers for {len(samples)} samples.")
    results = []
    for sample, answer in zip(samples, answers):
        predicted = box_to_pixels(answer, (sample.height, sample.width), image_aspect_ratio, clip=False)
        iou = 0.0 if predicted is None else box_iou(predicted, sample.bbox)
        results.append(
            {
                "image": sample.image,
                "sent": sample.sentence,
                "answer": answer,
                "pred_bbox": None if predicted is None else list(predicted),
                "gt_bbox": list(sample.bbox),
                "iou": iou,
                "correct": iou >= IOU_THRESHOLD,
            }
        )
    return sum(result["correct"] for result in results) / len(results), results
