"""Image processor of ConvLLaVA: the original "pad" pipeline, bit for bit, plus an aspect-ratio preserving mode."""

import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature, SizeDict
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension, ImageInput, is_scaled_image
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType, logging
from typing_extensions import Unpack

from .configuration_conv_llava import VISION_STRIDE, check_resolution, num_visual_tokens
from .image_files import check_pixel_count, load_image_source, open_image, upright_rgb
from .padded_resize import pad_to_square_and_resize

logger = logging.get_logger(__name__)

ASPECT_RATIO_MODES = ("pad", "preserve")


@contextlib.contextmanager
def auto_map_in_files_only(*objects):
    """
    Remove the `auto_map` attribute that transformers' `save_pretrained` sets on `objects` to write it into the files.
    `auto_map` says where a saved folder's code is: it belongs in the folder, not in the objects, whose `to_dict()` is
    then the same before a save, after it and after a reload.
    """
    try:
        yield
    finally:
        for obj in objects:
            obj.__dict__.pop("auto_map", None)


class ConvLlavaImageProcessorKwargs(ImagesKwargs, total=False):
    """
    resolution (`int`): side of the square canvas every image ends up on; a positive multiple of 64.
    image_aspect_ratio (`str`): `"pad"` (the released models) or `"preserve"`.
    """

    resolution: int
    image_aspect_ratio: str


def _check_settings(resolution: int | None, image_aspect_ratio: str | None) -> None:
    check_resolution(resolution)
    if image_aspect_ratio not in ASPECT_RATIO_MODES:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIO_MODES}, got {image_aspect_ratio!r}.")


def _square_side(name: str, value) -> int:
    """The side of the square `size` / `crop_size` setting describes, or a `ValueError` naming the settings to use."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, SizeDict):
        value = dataclasses.asdict(value)
    entries = {key: side for key, side in value.items() if side is not None} if isinstance(value, dict) else {}
    if set(entries) == {"shortest_edge"}:
        return entries["shortest_edge"]
    if set(entries) == {"height", "width"} and entries["height"] == entries["width"]:
        return entries["height"]
    raise ValueError(
        f"{name}={value!r} cannot be honoured: every image ends up on a square canvas. Set `resolution` (the "
        "canvas side, a multiple of 64) and `image_aspect_ratio` ('pad' or 'preserve') instead."
    )


def _resolve_size_settings(kwargs: dict) -> dict:
    """
    Honour explicit `size` / `crop_size` that describe one square side by making it the `resolution`; refuse
    `do_resize=False` and settings that disagree. `do_center_crop` has no effect: the canvas is never cropped.
    """
    kwargs = dict(kwargs)
    if kwargs.get("do_resize") is False:
        raise ValueError(
            "do_resize=False cannot be honoured: every image is resized onto the square canvas. Set `resolution` "
            "(the canvas side) and `image_aspect_ratio` ('pad' or 'preserve', which keeps the aspect ratio) instead."
        )
    sides = {name: _square_side(name, kwargs.pop(name)) for name in ("size", "crop_size") if kwargs.get(name)}
    if kwargs.get("resolution") is not None:
        sides["resolution"] = kwargs["resolution"]
    if len(set(sides.values())) > 1:
        raise ValueError(
            f"Conflicting canvas sides {sides}: `size` and `crop_size` describe the square canvas, whose side is "
            "`resolution`. Set `resolution` (and `image_aspect_ratio` for how the image fills it) only."
        )
    if sides:
        kwargs["resolution"] = next(iter(sides.values()))
    kwargs.pop("size", None)
    kwargs.pop("crop_size", None)
    return kwargs


class ConvLlavaImageProcessor(LlavaImageProcessorPil):
    r"""
    Turns images into ConvLLaVA's `pixel_values` (PIL backend: bicubic resizing by Pillow on uint8 data, as the
    original `CLIPImageProcessor` did).

    Every image ends up on a `resolution` x `resolution` canvas, so the outputs of separate calls always stack:

    - `image_aspect_ratio="pad"` (default; what the released models were trained with): the original pipeline. The
      image is centred on a square filled with the mean colour (`int(mean * 255)` per channel, offset
      `(long - short) // 2`), resized to `resolution` (bicubic), centre-cropped, rescaled by 1/255 and normalised.
      The whole canvas is content: `(resolution / 64) ** 2` visual tokens.
    - `image_aspect_ratio="preserve"`: no mean-colour padding. The image is scaled so that its longer side is
      `resolution`; each side is then rounded to the nearest multiple of 64 (halves round up) and clamped to
      `[64, resolution]`, the image is resized to exactly that size, rescaled, normalised and zero-padded at the
      bottom and right onto the canvas. `(height / 64) * (width / 64)` visual tokens, never more than in "pad" mode.

    `image_sizes` holds each image's content `(height, width)` on the canvas; the model encodes only that top-left
    region, so the canvas padding never changes its features.

    Inputs are PIL images, numpy arrays or torch tensors, or image files given as paths or bytes. PIL images get their
    EXIF orientation applied and 16-bit greyscale is mapped to 8 bits; every mode ends up RGB through PIL's
    `convert("RGB")`, like the original loader (an alpha channel is dropped, as there; arrays and tensors with an
    alpha channel follow transformers' convention and are composited onto white). `size`, `crop_size` and `do_pad`
    follow `resolution` and `image_aspect_ratio`; images are resized by Pillow (bicubic) on uint8 data, several at
    once on threads.

    Args:
        resolution (`int`, *optional*, defaults to 1536): side of the canvas, a positive multiple of 64.
        image_aspect_ratio (`str`, *optional*, defaults to `"pad"`): `"pad"` or `"preserve"`.
        **kwargs: the usual image-processor settings (`image_mean`, `image_std`, `resample`, ...).
    """

    valid_kwargs = ConvLlavaImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]
    resolution = 1536
    image_aspect_ratio = "pad"

    def __init__(self, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]):
        kwargs.pop("auto_map", None)  # a saved folder's pointer to its code (see `auto_map_in_files_only`)
        super().__init__(**_resolve_size_settings(kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """As transformers saves; `auto_map` goes into the files only (see `auto_map_in_files_only`)."""
        with auto_map_in_files_only(self):
            return super().save_pretrained(save_directory, *args, **kwargs)

    def preprocess(self, images: ImageInput, *args, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]) -> BatchFeature:
        """As in transformers; `size` / `crop_size` set the `resolution` of this call (see `_resolve_size_settings`)."""
        return super().preprocess(images, *args, **_resolve_size_settings(kwargs))

    def _standardize_kwargs(
        self, resolution: int | None = None, image_aspect_ratio: str | None = None, **kwargs
    ) -> dict:
        _check_settings(resolution, image_aspect_ratio)
        kwargs.update(
            size={"shortest_edge": resolution},
            crop_size={"height": resolution, "width": resolution},
            do_pad=image_aspect_ratio == "pad",
        )
        return super()._standardize_kwargs(resolution=resolution, image_aspect_ratio=image_aspect_ratio, **kwargs)

    def content_size(
        self, height: int, width: int, resolution: int | None = None, image_aspect_ratio: str | None = None
    ) -> tuple[int, int]:
        """(height, width) an image of that size fills on the canvas; settings default to this processor's."""
        resolution = self.resolution if resolution is None else resolution
        image_aspect_ratio = image_aspect_ratio or self.image_aspect_ratio
        _check_settings(resolution, image_aspect_ratio)
        if height <= 0 or width <= 0:
            raise ValueError(f"Image sizes must be positive, got {height}x{width} (height x width).")
        if image_aspect_ratio == "pad":
            return resolution, resolution
        longest = max(height, width)

        def side(length: int) -> int:
            # round(length * resolution / longest / 64), halves up, in exact integer arithmetic
            units = (2 * length * resolution + VISION_STRIDE * longest) // (2 * VISION_STRIDE * longest)
            return VISION_STRIDE * min(max(units, 1), resolution // VISION_STRIDE)

        return side(height), side(width)

    def num_image_tokens(
        self, height: int, width: int, resolution: int | None = None, image_aspect_ratio: str | None = None
    ) -> int:
        """Visual tokens the model spends on an image of `height` x `width` pixels (its original size)."""
        return num_visual_tokens(*self.content_size(height, width, resolution, image_aspect_ratio))

    def fetch_images(self, image_url_or_urls: ImageInput | str | os.PathLike | bytes | list) -> ImageInput:
        """
        Open images given as paths, bytes, base64 data or http(s) URLs (see `load_image_source`), raising `ValueError`
        for bad ones; other inputs pass through.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (bytes, bytearray, os.PathLike)):
            return open_image(image_url_or_urls)
        if isinstance(image_url_or_urls, str):
            return load_image_source(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def process_image(self, image: ImageInput, **kwargs) -> PIL.Image.Image:
        """One input image as an upright RGB PIL image, after the mode and size checks."""
        if isinstance(image, PIL.Image.Image):
            check_pixel_count(image.height, image.width)
            return upright_rgb(image)
        if isinstance(image, torch.Tensor) and image.dtype == torch.bfloat16:
            image = image.float()  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
        if 0 in np.shape(image):
            raise ValueError(f"Got an empty image array of shape {tuple(np.shape(image))}.")
        if kwargs.get("do_rescale") is False and is_scaled_image(np.asarray(image)):
            logger.warning_once(
                "It looks like you are passing images with pixel values between 0 and 1 and do_rescale=False. This "
                "processor works on 8-bit images like the original: such arrays are scaled to 0..255 first, so "
                "leave do_rescale=True (the default) to bring them back to 0..1; with do_rescale=False the pixel "
                "values stay 255 times too large."
            )
        array = super().process_image(image, **kwargs)  # channels-first RGB
        check_pixel_count(*array.shape[-2:])
        return to_pil_image(array, input_data_format=ChannelDimension.FIRST)

    @staticmethod
    def _resize_to_content(
        image: PIL.Image.Image, height: int, width: int, image_aspect_ratio: str, resample, image_mean: list[float]
    ) -> PIL.Image.Image:
        """The image resized to its `height` x `width` content size, in Pillow on uint8 data."""
        if image_aspect_ratio == "pad":
            # the original's `expand2square` (centred on a square of the mean colour) then resize, computed
            # without building the square, so the cost follows the image and the output, not the longer side
            colour = tuple(int(mean * 255) for mean in image_mean)
            return pad_to_square_and_resize(image, width, colour, PIL.Image.Resampling(resample))
        return image.resize((width, height), resample=resample)

    def _preprocess(
        self,
        images: list[PIL.Image.Image],
        resolution: int,
        image_aspect_ratio: str,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: list[float],
        image_std: list[float],
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        image_sizes = [self.content_size(image.height, image.width, resolution, image_aspect_ratio) for image in images]
        pixel_values = torch.zeros(len(images), 3, resolution, resolution)
        mean = torch.tensor(image_mean if do_normalize else 0.0, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(image_std if do_normalize else 1.0, dtype=torch.float32).reshape(-1, 1, 1)
        scale = rescale_factor if do_rescale else 1.0
        inference_mode = torch.is_inference_mode_enabled()  # thread-local: the worker threads must follow the caller

        @torch.inference_mode(inference_mode)
        def fill(index: int) -> None:
            height, width = image_sizes[index]
            resized = self._resize_to_content(images[index], height, width, image_aspect_ratio, resample, image_mean)
            pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
            # the original's arithmetic: uint8 -> float64 * scale -> float32, then (x - mean) / std in float32
            scaled = pixels.double().mul_(scale).float()
            torch.sub(scaled, mean, out=pixel_values[index, :, :height, :width]).div_(std)

        if len(images) > 1:  # Pillow's resize and torch release the GIL
            with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1)) as pool:
                list(pool.map(fill, range(len(images))))
        elif images:
            fill(0)
        data = {"pixel_values": pixel_values, "image_sizes": torch.tensor(image_sizes, dtype=torch.long)}
        if return_tensors not in ("pt", TensorType.PYTORCH):
            data = {
                key: list(value.numpy()) if key == "pixel_values" else value.tolist() for key, value in data.items()
            }
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["ConvLlavaImageProcessor"]
