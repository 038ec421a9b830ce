"""Batching encoded ConvLLaVA samples: pad text to the batch's longest sequence, gather every image of the batch."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from .data import IGNORE_INDEX


@dataclass
class ConvLlavaDataCollator:
    """
    Pads `input_ids` (with `pad_token_id`), `labels` (with -100) and builds `attention_mask`, all to the longest
    sample of the batch. Images are concatenated in sample order into one `(num_images, 3, H, W)` tensor (zero-padded
    to the largest canvas) with their `image_sizes`; a batch without images has no `pixel_values`.

    Args:
        pad_token_id: id written into padded `input_ids` positions (never attended to nor trained on).
        padding_side: `"right"` (training default, as the original) or `"left"`.
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. 8 for tensor cores).
    """

    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}.")

    def __call__(self, features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        length = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad([f["input_ids"] for f in features], length, self.pad_token_id),
            "attention_mask": self._pad([torch.ones_like(f["input_ids"]) for f in features], length, 0),
            "labels": self._pad([f["labels"] for f in features], length, IGNORE_INDEX),
        }
        images = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if images:
            batch["pixel_values"] = _stack_images(images)
            batch["image_sizes"] = torch.cat([f["image_sizes"] for f in features if f.get("pixel_values") is not None])
        return batch

    def _pad(self, sequences: list[torch.Tensor], length: int, value: int) -> torch.Tensor:
        padded = []
        for sequence in sequences:
            missing = length - len(sequence)
            padded.append(F.pad(sequence, (missing, 0) if self.padding_side == "left" else (0, missing), value=value))
        return torch.stack(padded)


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate `(n_i, 3, H_i, W_i)` image batches, zero-padding each to the largest height and width."""
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    return torch.cat([F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2])) for image in images])
