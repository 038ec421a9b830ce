"""A grounding answer's `[x1, y1, x2, y2]` box drawn on the original image."""

import PIL.Image
import PIL.ImageDraw

from ..grounding import post_process_grounding
from .token_grid import upright

BOX_COLOUR = (255, 40, 40)


def draw_box(image: PIL.Image.Image, box: tuple[float, float, float, float]) -> PIL.Image.Image:
    """A copy of the upright image with the pixel box `(x1, y1, x2, y2)` outlined."""
    image = upright(image).copy()
    line_width = max(2, round(max(image.size) / 200))
    PIL.ImageDraw.Draw(image).rectangle(box, outline=BOX_COLOUR, width=line_width)
    return image


def grounding_picture(
    processor, answer: str, image: PIL.Image.Image, image_aspect_ratio: str, max_side: int = 1024
) -> PIL.Image.Image | None:
    """
    The image with the answer's box (mapped by `post_process_grounding`), scaled down to at most
    `max_side` pixels; None when the answer holds no box.
    """
    image = upright(image)
    (box,) = post_process_grounding([answer], [(image.height, image.width)], image_aspect_ratio)
    if box is None:
        return None
    picture = draw_box(image, box)
    picture.thumbnail((max_side, max_side))
    return picture
