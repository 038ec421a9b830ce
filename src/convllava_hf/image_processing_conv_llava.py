"""
Image processor of ConvLLaVA: LLaVA's (PIL backend), whose `do_pad` path is the original "pad" pipeline bit for bit,
plus "preserve" (the image's aspect ratio, zero padding). The convllava-hf package plugs in its extras (see
`image_files`): image files open with its checks and messages, and thin images are padded without the whole square.
"""

import contextlib

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
#: Up to this longer side, "pad" builds the square as LLaVA does; beyond, the package resizes it without building it.
MAX_SQUARE_SIDE = 4096


@contextlib.contextmanager
def auto_map_in_files_only(*objects):
    """Drop the `auto_map` that `save_pretrained` sets on `objects`: it belongs in the files; `to_dict()` stays."""
    try:
        yield
    finally:
        for obj in objects:
            obj.__dict__.pop("auto_map", None)


def check_settings(resolution: object, image_aspect_ratio: object) -> None:
    """Refuse a `resolution` that is not a positive multiple of 64 and an unknown `image_aspect_ratio`."""
    check_resolution(resolution)
    if image_aspect_ratio not in ASPECT_RATIO_MODES:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIO_MODES}, got {image_aspect_ratio!r}.")


class ConvLlavaImageProcessorKwargs(ImagesKwargs, total=False):
    """
    resolution (`int`): side of the square canvas every image ends up on; a positive multiple of 64.
    image_aspect_ratio (`str`): `"pad"` (the released models) or `"preserve"`.
    """

    resolution: int
    image_aspect_ratio: str


def canvas_settings(kwargs: dict) -> dict:
    """`kwargs` with `size` / `crop_size` (one square side, as a stock LLaVA folder has them) as `resolution`."""
    kwargs = {key: value for key, value in kwargs.items() if key != "auto_map"}
    if kwargs.get("do_resize") is False:
        raise ValueError(
            "do_resize=False cannot be honoured: every image is resized onto the square canvas. Set `resolution` "
            "(the canvas side) and `image_aspect_ratio` ('pad' or 'preserve', which keeps the aspect ratio) instead."
        )
    sides = {}
    for name in ("size", "crop_size"):
        value = kwargs.pop(name, None)
        if isinstance(value, SizeDict):
            value = {key: side for key, side in vars(value).items() if side is not None}
        if isinstance(value, dict) and set(value) == {"shortest_edge"}:
            value = value["shortest_edge"]
        elif isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
            value = value["height"]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(
                f"{name}={value!r} cannot be honoured: every image ends up on a square canvas. Set `resolution` (the "
                "canvas side, a multiple of 64) and `image_aspect_ratio` ('pad' or 'preserve') instead."
            )
        if value is not None:
            sides[name] = value
    if kwargs.get("resolution") is not None:
        sides["resolution"] = kwargs["resolution"]
    if len(set(sides.values())) > 1:
        raise ValueError(
            f"Conflicting canvas sides {sides}: `size` and `crop_size` describe the square canvas, whose side is "
            "`resolution`. Set `resolution` (and `image_aspect_ratio` for how the image fills it) only."
        )
    if sides:
        kwargs["resolution"] = next(iter(sides.values()))
    if kwargs.pop("do_pad", None) is False and "image_aspect_ratio" not in kwargs:  # a stock LLaVA setting
        raise ValueError(
            "image_processor.do_pad=False: the original pipeline pads each image to a square of its mean colour. Set "
            "image_aspect_ratio='preserve' for ConvLLaVA's mode that keeps the aspect ratio (do_pad follows it)."
        )
    return kwargs


class ConvLlavaImageProcessor(LlavaImageProcessorPil):
    r"""
    [`LlavaImageProcessorPil`] on a `resolution` x `resolution` canvas, in one of two modes:

    - `image_aspect_ratio="pad"` (default; the released models'): LLaVA's `do_pad` path, the original pipeline. The
      image is centred on a square of the mean colour, resized to `resolution` (bicubic) and normalised: the whole
      canvas is content, `(resolution / 64) ** 2` visual tokens.
    - `image_aspect_ratio="preserve"`: the image is resized so that its longer side is `resolution`, each side
      rounded to the nearest multiple of 64 (halves up, within `[64, resolution]`), normalised and zero-padded at the
      bottom and right: `(height / 64) * (width / 64)` visual tokens.

    `image_sizes` holds each image's content `(height, width)`; the model encodes only that top-left region.

    Args:
        resolution (`int`, *optional*, defaults to 1536): side of the canvas, a positive multiple of 64.
        image_aspect_ratio (`str`, *optional*, defaults to `"pad"`): `"pad"` or `"preserve"`.
        **kwargs: LLaVA's image-processor settings (`image_mean`, `image_std`, `resample`, ...).
    """

    valid_kwargs = ConvLlavaImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]
    #: The package's `convllava_hf.image_files` and `convllava_hf.padded_resize`, set when it registers this class:
    #: image files opened with sizes checked before decoding, and "pad" resizing of a longer side than
    #: `MAX_SQUARE_SIDE` without the square. None as remote code, which then uses transformers' `load_image` and
    #: LLaVA's padding.
    image_files = None
    padded_resize = None
    resolution = 1536
    image_aspect_ratio = "pad"
    do_pad = True

    def __init__(self, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]):
        super().__init__(**canvas_settings(kwargs))

    def to_dict(self) -> dict:
        """LLaVA's settings, with `size`, `crop_size` and `do_pad` following `resolution` and `image_aspect_ratio`."""
        settings = super().to_dict()
        side, pad = settings["resolution"], settings["image_aspect_ratio"] == "pad"
        return {
            **settings,
            "size": {"shortest_edge": side},
            "crop_size": {"height": side, "width": side},
            "do_pad": pad,
        }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves; `auto_map` goes into the files only (see `auto_map_in_files_only`)."""
        with auto_map_in_files_only(self):
            return super().save_pretrained(save_directory, *args, **kwargs)

    def preprocess(self, images, *args, **kwargs: Unpack[ConvLlavaImageProcessorKwargs]) -> BatchFeature:
        """As in transformers; `size` / `crop_size` set the `resolution` of this call."""
        return super().preprocess(images, *args, **canvas_settings(kwargs))

    def _standardize_kwargs(self, resolution=None, image_aspect_ratio=None, **kwargs) -> dict:
        check_settings(resolution, image_aspect_ratio)
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
        resolution = resolution or self.resolution
        image_aspect_ratio = image_aspect_ratio or self.image_aspect_ratio
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

    def num_image_tokens(
        self, height: int, width: int, resolution: int | None = None, image_aspect_ratio: str | None = None
    ) -> int:
        """Visual tokens the model spends on an image of `height` x `width` pixels (its original size)."""
        return num_visual_tokens(*self.content_size(height, width, resolution, image_aspect_ratio))

    def fetch_images(self, image_url_or_urls):
        """Images from paths, bytes, base64 data or URLs; with the package, opened with its checks and messages."""
        if self.image_files is None:
            return super().fetch_images(image_url_or_urls)
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            return self.image_files.load_image_source(image_url_or_urls)
        if isinstance(image_url_or_urls, (bytes, bytearray)) or hasattr(image_url_or_urls, "__fspath__"):
            return self.image_files.open_image(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def process_image(self, image, **kwargs) -> np.ndarray:
        """LLaVA's, with the package's checks (empty or too large images, EXIF orientation, 16-bit greyscale)."""
        if self.image_files is not None and isinstance(image, PIL.Image.Image):
            self.image_files.check_pixel_count(image.height, image.width)
            image = self.image_files.upright_rgb(image)
        if getattr(image, "dtype", None) is not None and str(image.dtype) == "torch.bfloat16":
            image = image.float()  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
        if kwargs.get("do_rescale") is False and not isinstance(image, PIL.Image.Image):
            if is_scaled_image(np.asarray(image, dtype=np.float32)):
                logger.warning_once(
                    "It looks like you are passing images with pixel values between 0 and 1 and do_rescale=False. "
                    "This processor works on 8-bit images like the original: such arrays are scaled to 0..255 first, "
                    "so leave do_rescale=True (the default) to bring them back to 0..1."
                )
        array = super().process_image(image, **kwargs)
        if self.image_files is not None:
            self.image_files.check_pixel_count(*array.shape[-2:])
        if array.dtype != np.uint8:  # 8-bit, as the original's PIL images (floats in [0, 1] scaled by 255)
            array = np.moveaxis(np.asarray(to_pil_image(array, input_data_format=ChannelDimension.FIRST)), -1, 0)
        return array

    def _padded_square(self, image: np.ndarray, resolution: int, image_mean, resample) -> np.ndarray:
        """The image on a square of the mean colour, as LLaVA pads it; a longer side resized by the package."""
        colour = tuple(int(mean * 255) for mean in image_mean)
        if self.padded_resize is None or max(image.shape[1:]) <= MAX_SQUARE_SIDE:
            return self.pad_to_square(image, background_color=colour)
        resized = self.padded_resize.pad_to_square_and_resize(
            PIL.Image.fromarray(np.moveaxis(image, 0, -1)), resolution, colour, PIL.Image.Resampling(resample)
        )
        return np.moveaxis(np.asarray(resized), -1, 0)  # already `resolution` square: LLaVA's resize keeps it

    def _preprocess(self, images, resolution, image_aspect_ratio, resample, image_mean, return_tensors, **kwargs):
        sizes = [self.content_size(*image.shape[1:], resolution, image_aspect_ratio) for image in images]
        if image_aspect_ratio == "pad":
            images = [self._padded_square(image, resolution, image_mean, resample) for image in images]
        else:
            images = [self.resize(image, SizeDict(height=h, width=w), resample) for image, (h, w) in zip(images, sizes)]
            kwargs.update(do_resize=False, do_center_crop=False)
        kwargs["do_pad"] = False
        processed = super()._preprocess(images, resample=resample, image_mean=image_mean, return_tensors=None, **kwargs)
        pixel_values = np.zeros((len(images), 3, resolution, resolution), dtype=np.float32)
        for canvas, image in zip(pixel_values, processed["pixel_values"]):
            canvas[:, : image.shape[1], : image.shape[2]] = image
        data = {"pixel_values": pixel_values, "image_sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2)}
        if return_tensors is None:
            data = {"pixel_values": list(pixel_values), "image_sizes": [list(size) for size in sizes]}
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["ConvLlavaImageProcessor"]
