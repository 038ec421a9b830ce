"""`--verify`: reload a converted folder with the Auto classes and run one forward pass on a fixed input."""

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .errors import ConversionError

VERIFY_QUESTION = "What is shown in this image?"


def synthetic_image(resolution: int) -> PIL.Image.Image:
    """A deterministic 4:3 landscape test image (colour gradients and a dark disc), `resolution` pixels wide."""
    height, width = resolution * 3 // 4, resolution
    y, x = np.mgrid[0:height, 0:width] / np.array([[[height]], [[width]]])
    disc = (x - 0.6) ** 2 + (y - 0.5) ** 2 < 0.04
    rgb = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 255
    rgb[disc] = (40, 20, 10)
    return PIL.Image.fromarray(rgb.astype(np.uint8))


def verify_conversion(folder: Path) -> dict:
    """
    Load `folder` with `AutoProcessor` / `AutoModelForImageTextToText` (refusing any missing, unexpected or
    mismatched weight) and run one forward pass on `synthetic_image` + a fixed question. Returns the visual token
    count and a summary of the logits; refuses non-finite logits.
    """
    processor = AutoProcessor.from_pretrained(folder)
    model, loading_info = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto", output_loading_info=True)
    problems = {kind: sorted(names) for kind, names in loading_info.items() if names}
    if problems:
        raise ConversionError(f"Reloading {folder} did not match the weights exactly: {problems}")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": VERIFY_QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    resolution = processor.image_processor.crop_size["height"]
    inputs = processor(images=synthetic_image(resolution), text=prompt, return_tensors="pt")
    with torch.inference_mode():
        logits = model.eval()(**inputs.to(model.dtype)).logits[0].float()
    if not torch.isfinite(logits).all():
        raise ConversionError(f"The reloaded model in {folder} produced non-finite logits.")
    next_token = int(logits[-1].argmax())
    return {
        "visual_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "sequence_length": int(inputs["input_ids"].shape[1]),
        "logits_shape": list(logits.shape),
        "logits_mean": float(logits.mean()),
        "logits_std": float(logits.std()),
        "logits_min": float(logits.min()),
        "logits_max": float(logits.max()),
        "next_token_id": next_token,
        "next_token": processor.decode([next_token]),
    }
