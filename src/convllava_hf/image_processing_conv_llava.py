"""
Image processor of ConvLLaVA: LLaVA's (PIL backend), whose `do_pad` path is the original "pad" pipeline bit for bit,
plus "preserve" (aspect ratio kept, zero padding). The package plugs in its file checks and thin-image resizing.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
from transformers.image_processing_utils import BatchFeature, SizeDict
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension, is_scaled_image
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging
from typing_extensions import Unpack

from .configuration_conv_llava import VISION_STRIDE, check_resolution, num_visual_tokens

logger = logging.get_logger(__name__)

ASPECT_RATIO_MODES = ("pad", "preserve")
SETTINGS_HINT = "Set `resolution` (a multiple of 64) and `image_aspect_ratio` ('pad' or 'preserve') instead."
#: Up to this longer side, "pad" builds the square as LLaVA does; beyond, the package resizes it without building it.
MAX_SQUARE_SIDE = 4096


def check_settings(resolution: object, image_aspect_ratio: object) -> None:
    """Refuse a `resolution` that is not a positive multiple of 64 and an unknown `image_aspect_ratio`."""
    check_resolution(resolution)
    if image_aspect_ratio not in ASPECT_RATIO_MODES:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIO_MODES}, got {image_aspect_ratio!r}.")


class ConvLlavaImageProcessorKwargs(ImagesKwargs, total=False):
    """`resolution`: side of the square canvas, a multiple of 64; `image_aspect_ratio`: "pad" or "preserve"."""

    resolution: int
    image_aspect_ratio: str


def square_side(name: str, value) -> int:
    """The side of the square a `size` / `crop_size` setting describes, or a `ValueError` naming the setting."""
    entries = vars(value) if isinstance(value, SizeDict) else value if isinstance(value, dict) else {}
    entries = {key: side for key, side in entries.items() if side is not None}
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if set(entries) == {"shortest_edge"} or (set(entries) == {"height", "width"} and len(set(entries.values())) == 1):
        return next(iter(entries.values()))
    raise ValueError(f"{name}={value!r} cannot be honoured: every image ends up on a square canvas. {SETTINGS_HINT}")


def canvas_settings(kwargs: dict) -> dict:
    """`kwargs` with `size` / `crop_size` (one square side, as a stock LLaVA folder has them) as `resolution`."""
    kwargs = {key: value for key, value in kwargs.items() if key != "auto_map"}
    sides = {name: square_side(name, kwargs.pop(name)) for name in ("size", "crop_size") if kwargs.get(name)}
    sides.update({} if kwargs.get("resolution") is None else {"resolution": kwargs["resolution"]})
    if kwargs.get("do_resize") is False:
        raise ValueError(f"do_resize=False cannot be honoured: every image is resized onto the canvas. {SETTINGS_HINT}")
    if len(set(sides.values())) > 1:
        raise ValueError(f"Conflicting canvas sides {sides}: `size` and `crop_size` describe it. {SETTINGS_HINT}")
    if kwargs.pop("do_pad", None) is False and "image_aspect_ratio" not in kwargs:  # a stock LLaVA setting
        raise ValueError(f"image_processor.do_pad=False: the original pads to a square. {SETTINGS_HINT}")
    kwargs.pop("size", None), kwargs.pop("crop_size", None)
    return {**kwargs, "resolution": next(iter(sides.values()))} if sides else kwargs


class ConvLlavaImageProcessor(LlavaImageProcessorPil):
    r"""
    [`LlavaImageProcessorPil`] on a square canvas of side `resolution` (1536, a multiple of 64). `"pad"` mode (default)
    is LLaVA's `do_pad` path, the original pipeline; `"preserve"` resizes the longer side to `resolution`, each side
    rounded to a multiple of 64 (halves up, in [64, resolution]), then zero-pads. `image_sizes`: each image's content.
    """

    valid_kwargs = ConvLlavaImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]
    #: The package's `image_files` (checked file opening) and `padded_resize` ("pad" of a side over `MAX_SQUARE_SIDE`
    #: without the square), set as it registers this class; as remote code, transformers' `load_image` and LLaVA's.
    image_files = padded_resize = None
    resolution, image_aspect_ratio, do_pad = 1536, "pad", True

    def __init__(self, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]):
        super().__init__(**canvas_settings(kwargs))

    def to_dict(self) -> dict:
        """LLaVA's settings, with `size`, `crop_size` and `do_pad` following `resolution` and `image_aspect_ratio`."""
        settings = super().to_dict()
        side, pad = settings["resolution"], settings["image_aspect_ratio"] == "pad"
        return {**settings, "size": {"shortest_edge": side}, "crop_size": dict(height=side, width=side), "do_pad": pad}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves; the `auto_map` it sets goes into the files only, so `to_dict()` stays the same."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        self.__dict__.pop("auto_map", None)
        return saved

    def preprocess(self, images, *args, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]) -> BatchFeature:
        """As in transformers; `size` / `crop_size` set the `resolution` of this call."""
        return super().preprocess(images, *args, **canvas_settings(kwargs))

    def _standardize_kwargs(self, resolution=None, image_aspect_ratio=None, **kwargs) -> dict:
        check_settings(resolution, image_aspect_ratio)
        kwargs.update(size={"shortest_edge": resolution}, do_pad=image_aspect_ratio == "pad")
        kwargs.update(crop_size={"height": resolution, "width": resolution})
        return super()._standardize_kwargs(resolution=resolution, image_aspect_ratio=image_aspect_ratio, **kwargs)

    def content_size(self, height: int, width: int, resolution=None, image_aspect_ratio=None) -> tuple[int, int]:
        """(height, width) an image of that size fills on the canvas; settings default to this processor's."""
        resolution, image_aspect_ratio = resolution or self.resolution, image_aspect_ratio or self.image_aspect_ratio
        check_settings(resolution, image_aspect_ratio)
        if height <= 0 or width <= 0:
            raise ValueError(f"Image sizes must be positive, got {height}x{width} (height x width).")
        if image_aspect_ratio == "pad":
            return resolution, resolution
        longest = max(height, width)

        def side(length: int) -> int:  # round(length * resolution / longest / 64), halves up, in integers
            units = (2 * length * resolution + VISION_STRIDE * longest) // (2 * VISION_STRIDE * longest)
            return VISION_STRIDE * min(max(units, 1), resolution // VISION_STRIDE)

        return side(height), side(width)

    def num_image_tokens(self, height: int, width: int, resolution=None, image_aspect_ratio=None) -> int:
        """Visual tokens the model spends on an image of `height` x `width` pixels (its original size)."""
        return num_visual_tokens(*self.content_size(height, width, resolution, image_aspect_ratio))

    def fetch_images(self, image_url_or_urls):
        """Images from paths, bytes, base64 data or URLs; with the package, opened with its checks and messages."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if self.image_files is not None and isinstance(image_url_or_urls, (str, bytes, bytearray, os.PathLike)):
            return self.image_files.open_source(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def process_image(self, image, **kwargs) -> np.ndarray:
        """LLaVA's, as 8-bit like the original's images, with the package's checks (size, EXIF, 16-bit greyscale)."""
        if self.image_files is not None and isinstance(image, PIL.Image.Image):
            image = self.image_files.checked_rgb(image)
        if str(getattr(image, "dtype", "")) == "torch.bfloat16":
            image = image.float()  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
        unscaled = kwargs.get("do_rescale") is False and not isinstance(image, PIL.Image.Image)
        if unscaled and is_scaled_image(np.asarray(image, dtype=np.float32)):  # silently 255 times too large
            logger.warning_once(
                "It looks like you are passing images with pixel values between 0 and 1 and do_rescale=False. They "
                "become 8-bit (x255) like the original's images: leave do_rescale=True to bring them back to 0..1."
            )
        array = super().process_image(image, **kwargs)
        if self.image_files is not None:
            self.image_files.check_pixel_count(*array.shape[-2:])
        if array.dtype != np.uint8:  # floats in [0, 1] scaled by 255
            array = np.moveaxis(np.asarray(to_pil_image(array, input_data_format=ChannelDimension.FIRST)), -1, 0)
        return array

    def _preprocess(self, images, resolution, image_aspect_ratio, resample, image_mean, return_tensors, **kwargs):
        sizes = [self.content_size(*image.shape[1:], resolution, image_aspect_ratio) for image in images]
        pad, thin, colour = (
            image_aspect_ratio == "pad",
            self.padded_resize,
            tuple(int(mean * 255) for mean in image_mean),
        )
        kwargs.update(do_pad=False, resample=resample, image_mean=image_mean, return_tensors=None)
        kwargs.update({} if pad else {"do_resize": False, "do_center_crop": False})
        pixel_values, llava = np.zeros((len(images), 3, resolution, resolution), dtype=np.float32), super()._preprocess

        def fill(index: int) -> None:  # LLaVA's steps for one image (padded to its square, or resized), on its canvas
            image, (height, width) = images[index], sizes[index]
            if not pad:
                image = self.resize(image, SizeDict(height=height, width=width), resample)
            elif thin is None or max(image.shape[1:]) <= MAX_SQUARE_SIDE:
                image = self.pad_to_square(image, colour)
            else:  # already `resolution` square: LLaVA's resize keeps it
                image = thin.resized_padded_square(image, resolution, colour, resample)
            pixel_values[index, :, :height, :width] = llava([image], **kwargs)["pixel_values"][0]

        with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1) or 1) as pool:  # Pillow and numpy free the GIL
            list(pool.map(fill, range(len(images))))
        if return_tensors is None:
            return BatchFeature({"pixel_values": list(pixel_values), "image_sizes": [list(size) for size in sizes]})
        image_sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)
        return BatchFeature({"pixel_values": pixel_values, "image_sizes": image_sizes}, tensor_type=return_tensors)


__all__ = ["ConvLlavaImageProcessor"]
