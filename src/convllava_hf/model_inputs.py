"""Checks and splitting of ConvLLaVA's model inputs: clear errors for bad input, compilable on the hot path."""

import operator
from collections.abc import Sequence

import torch
from transformers.utils import logging, torch_compilable_check

ImageInput = torch.Tensor | Sequence[torch.Tensor]

#: The original ConvLLaVA's `IMAGE_TOKEN_INDEX`, which its prompts carry instead of expanded image tokens.
ORIGINAL_IMAGE_PLACEHOLDER_ID = -200

logger = logging.get_logger(__name__)


@torch.compiler.disable(
    reason="ConvLLaVA reads a tensor image_sizes on the host: the sizes decide each image's crop and token count. "
    "Under fullgraph compilation pass image_sizes as a list of ints, or None when every image fills the canvas."
)
def sizes_on_host(image_sizes: torch.Tensor) -> list:
    """`image_sizes.tolist()`, always eager: a graph break under `torch.compile`, which `fullgraph=True` refuses."""
    return image_sizes.tolist()


def image_size_pairs(
    image_sizes: torch.Tensor | Sequence[Sequence[int]], num_images: int, canvas: tuple[int, int]
) -> list[tuple[int, int]]:
    """
    The `(height, width)` of each image's content, checked against the batch: one pair of positive integers per
    image, no larger than the `canvas` (height, width) of `pixel_values`.

    A tensor is read to the host with one `.tolist()`: the sizes decide each image's crop and token count, so they are
    data that shapes depend on. Under `torch.compile(fullgraph=True)` pass them as a list of ints (constants at trace
    time) or leave them out when every image fills the canvas.
    """
    rows = sizes_on_host(image_sizes) if isinstance(image_sizes, torch.Tensor) else image_sizes
    try:
        pairs = [tuple(operator.index(side) for side in row) for row in rows]
    except TypeError:
        pairs = None
    if pairs is None or any(len(pair) != 2 for pair in pairs):
        if isinstance(image_sizes, torch.Tensor):
            described = f"a tensor {tuple(image_sizes.shape)} of {image_sizes.dtype}"
        else:
            described = repr(image_sizes)
        raise ValueError(f"image_sizes must be one (height, width) pair of integers per image, got {described}.")
    if len(pairs) != num_images:
        raise ValueError(f"Got {len(pairs)} image_sizes for {num_images} images in pixel_values.")
    canvas_height, canvas_width = canvas
    for index, (height, width) in enumerate(pairs):
        if height <= 0 or width <= 0:
            raise ValueError(f"image_sizes must be positive, got ({height}, {width}) for image {index}.")
    if any(height > canvas_height or width > canvas_width for height, width in pairs):
        raise ValueError(f"image_sizes {pairs} exceed the pixel_values canvas ({canvas_height}, {canvas_width}).")
    return pairs


def split_images(pixel_values: ImageInput, image_sizes: torch.Tensor | Sequence | None) -> list[torch.Tensor]:
    """
    One `(3, h, w)` tensor per image, from a list of such tensors or from a batch `(B, 3, H, W)` whose image `i`
    fills the top-left `image_sizes[i]` (height, width) region (the rest is padding and is never encoded).
    """
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
            )
        if image_sizes is None:
            return list(pixel_values)
        sizes = image_size_pairs(image_sizes, len(pixel_values), tuple(pixel_values.shape[-2:]))
        return [image[:, :height, :width] for image, (height, width) in zip(pixel_values, sizes)]
    images = list(pixel_values)
    for image in images:
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise ValueError("A list of pixel_values must hold one (channels, height, width) tensor per image.")
    return images


def check_pixel_dtypes(images: Sequence[torch.Tensor]) -> None:
    """
    Refuse integer pixel values (e.g. uint8 0..255 straight from an image): the model takes the processor's
    normalised floats. A dtype check: free on any device and under `torch.compile`.
    """
    dtypes = sorted({str(image.dtype) for image in images if not image.is_floating_point()})
    if dtypes:
        raise ValueError(
            f"pixel_values hold {', '.join(dtypes)} values; the model takes the normalised float pixels that "
            "ConvLlavaProcessor (or ConvLlavaImageProcessor) makes from images, not raw pixel values."
        )


def check_token_id_dtype(input_ids: torch.Tensor) -> None:
    """Refuse `input_ids` that are not integer token ids (the embedding lookup would fail with a bare error)."""
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids must be integer token ids (torch.long), got {input_ids.dtype}; the processor's or the "
            "tokenizer's input_ids are."
        )


def values_are_readable(tensor: torch.Tensor) -> bool:
    """
    Whether a check may read `tensor`'s values: not on the meta device (shapes only, `.item()` is impossible) and not
    under `torch.compile`, where a check could only add a message-less assertion and a host synchronisation.
    """
    return tensor.device.type != "meta" and not torch.compiler.is_compiling()


def check_finite_pixels(batch: torch.Tensor, image_indices: Sequence[int]) -> None:
    """
    Refuse NaN or Inf pixels (one of them makes every logit NaN) with a `ValueError` naming the images. `batch` holds
    the images `image_indices` of the input. Eager real tensors only: free on the meta device and under compile.
    """
    if not values_are_readable(batch):
        return

    def message() -> str:
        bad = [index for index, image in zip(image_indices, batch) if not torch.isfinite(image).all()]
        return f"pixel_values of image(s) {bad} hold NaN or Inf values; every pixel must be a finite number."

    torch_compilable_check(torch.isfinite(batch).all(), message)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, image_token_id: int) -> None:
    """
    Refuse ids outside `[0, vocab_size)` with a `ValueError` naming them and the vocabulary size (the embedding lookup
    would fail with a bare `IndexError`). Reads one boolean on the host; free on the meta device and under compile.
    """
    if not values_are_readable(input_ids):
        return
    in_vocabulary = (input_ids >= 0) & (input_ids < vocab_size)

    def message() -> str:
        bad = input_ids[~in_vocabulary].unique().tolist()
        hint = (
            f" {ORIGINAL_IMAGE_PLACEHOLDER_ID} is the original ConvLLaVA's image placeholder: let ConvLlavaProcessor "
            f"expand each <image> into image tokens (id {image_token_id})."
            if ORIGINAL_IMAGE_PLACEHOLDER_ID in bad
            else ""
        )
        return f"input_ids hold {bad[:10]}, outside the vocabulary of {vocab_size} ids [0, {vocab_size}).{hint}"

    torch_compilable_check(in_vocabulary.all(), message)


def warn_if_longer_than_positions(sequence_length: int, max_position_embeddings: int | None) -> None:
    """Warn once when an input has more tokens than the positions the language model was trained on (eager only)."""
    if (
        max_position_embeddings is not None
        and sequence_length > max_position_embeddings
        and not torch.compiler.is_compiling()  # dynamo cannot trace logging; shapes are known before compiling
    ):
        logger.warning_once(
            f"The input has {sequence_length} tokens, more than the language model's max_position_embeddings "
            f"({max_position_embeddings}); positions beyond {max_position_embeddings} were never trained and the "
            "outputs are unreliable."
        )
