"""What the vision tower sees of an image: its visual-token count and 64-pixel grid, computed without a model run."""

from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw

from ..configuration_conv_llava import VISION_STRIDE, visual_token_grid
from ..image_files import upright_rgb
from ..image_processing_conv_llava import ConvLlavaImageProcessor
from ..padded_resize import pad_to_square_and_resize

PREVIEW_SIDE = 512  # longest side of a preview picture, in pixels
GRID_COLOUR = (255, 255, 255, 150)


@dataclass(frozen=True)
class TokenGrid:
    """The visual tokens of one image: a `rows` x `cols` grid of 64-pixel cells over its content on the canvas."""

    height: int  # the (upright) original image's size
    width: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        return self.rows * self.cols

    def describe(self) -> str:
        return f"{self.width}x{self.height} px -> {self.cols}x{self.rows} = {self.tokens} visual tokens"


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image as the processor reads it: EXIF orientation applied, RGB, 16-bit greyscale mapped to 8 bits."""
    return upright_rgb(image)


def token_grid(
    image_processor: ConvLlavaImageProcessor, height: int, width: int, resolution: int, image_aspect_ratio: str
) -> TokenGrid:
    """The token grid of an upright `height` x `width` image, from the processor's `content_size`."""
    content_height, content_width = image_processor.content_size(height, width, resolution, image_aspect_ratio)
    return TokenGrid(height, width, *visual_token_grid(content_height, content_width))


def grid_preview(
    image: PIL.Image.Image,
    image_processor: ConvLlavaImageProcessor,
    resolution: int,
    image_aspect_ratio: str,
    size: tuple[int, int] | None = None,
) -> tuple[PIL.Image.Image, TokenGrid]:
    """
    The image as the model sees it (padded with the mean colour in "pad" mode, resized to its content size), with
    the 64-pixel cell of each visual token outlined, scaled down for display; and its `TokenGrid`. `size` is the
    upright original's (height, width) when `image` is a reduced copy of it (see `image_files.open_reduced`).
    """
    image = upright(image)
    grid = token_grid(image_processor, *(size or (image.height, image.width)), resolution, image_aspect_ratio)
    content_height, content_width = grid.rows * VISION_STRIDE, grid.cols * VISION_STRIDE
    scale = min(1.0, PREVIEW_SIDE / max(content_height, content_width))
    width, height = round(content_width * scale), round(content_height * scale)
    if image_aspect_ratio == "pad":  # the original's mean-colour square, resized straight to the preview's side
        colour = tuple(int(mean * 255) for mean in image_processor.image_mean)
        preview = pad_to_square_and_resize(image, width, colour, PIL.Image.Resampling(image_processor.resample))
    else:
        preview = image.resize((width, height), resample=image_processor.resample)
    preview = preview.convert("RGBA")
    overlay = PIL.Image.new("RGBA", preview.size, (0, 0, 0, 0))
    draw = PIL.ImageDraw.Draw(overlay)
    for col in range(grid.cols + 1):
        x = min(round(col * VISION_STRIDE * scale), preview.width - 1)
        draw.line([(x, 0), (x, preview.height - 1)], fill=GRID_COLOUR, width=1)
    for row in range(grid.rows + 1):
        y = min(round(row * VISION_STRIDE * scale), preview.height - 1)
        draw.line([(0, y), (preview.width - 1, y)], fill=GRID_COLOUR, width=1)
    return PIL.Image.alpha_composite(preview, overlay).convert("RGB"), grid
