"""The "pad" preprocessing without the square canvas: equal to Pillow on the square, cost bounded by the input."""

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest

from convllava_hf import padded_resize
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor
from convllava_hf.padded_resize import AxisResampling, pad_to_square_and_resize, resample_axis

FILTERS = list(PIL.Image.Resampling)
EXACT_FILTERS = list(padded_resize.EXACT_FILTERS)


def square_then_resize(image: PIL.Image.Image, side: int, colour: tuple, resample) -> np.ndarray:
    """The original `expand2square` followed by Pillow's resize: the reference."""
    long = max(image.size)
    square = PIL.Image.new("RGB", (long, long), colour)
    square.paste(image, ((long - image.width) // 2, (long - image.height) // 2))
    return np.asarray(square.resize((side, side), resample=resample))


def random_case(rng: np.random.Generator) -> tuple[PIL.Image.Image, int, tuple]:
    side = int(rng.choice([64, 128, 192, 320]))
    shape = rng.integers(4)
    if shape == 0:  # anything small
        width, height = (int(v) for v in rng.integers(1, 500, 2))
    elif shape == 1:  # thin
        width, height = int(rng.integers(100, 2500)), int(rng.integers(1, 12))
    elif shape == 2:  # around the output size, both up- and downscaling
        width, height = (int(v) for v in rng.integers(side // 2, 2 * side, 2))
    else:  # long side equal to the output side: Pillow copies the square
        width, height = side, int(rng.integers(1, side))
    if rng.random() < 0.5:
        width, height = height, width
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if rng.random() < 0.25:  # saturated images exercise the clipping
        pixels[...] = rng.choice([0, 255])
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    return PIL.Image.fromarray(pixels), side, colour


@pytest.mark.parametrize("seed", range(4))
def test_equals_pillow_on_the_square_for_random_shapes_and_filters(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        image, side, colour = random_case(rng)
        resample = FILTERS[rng.integers(len(FILTERS))]
        expected = square_then_resize(image, side, colour, resample)
        np.testing.assert_array_equal(np.asarray(pad_to_square_and_resize(image, side, colour, resample)), expected)


@pytest.mark.parametrize("seed", range(4))
def test_numpy_passes_equal_pillow_on_the_square(seed, monkeypatch):
    """The path taken for long images, forced on small ones so that the square can be built as the reference."""
    monkeypatch.setattr(padded_resize, "PILLOW_PASS_PIXELS", 0)
    monkeypatch.setattr(padded_resize, "INTERMEDIATE_BUDGET", 0 if seed % 2 else 1 << 26)  # both tall variants
    rng = np.random.default_rng(100 + seed)
    for _ in range(25):
        image, side, colour = random_case(rng)
        resample = EXACT_FILTERS[rng.integers(len(EXACT_FILTERS))]
        expected = square_then_resize(image, side, colour, resample)
        np.testing.assert_array_equal(np.asarray(pad_to_square_and_resize(image, side, colour, resample)), expected)


@pytest.mark.parametrize(
    ("length", "content", "side"),
    [(5_000, 3, 64), (120_000, 1, 64), (300_000, 7, 64), (1_000_000, 2, 128)],  # the last two sum weights exactly
)
def test_padded_axis_equals_pillow_on_a_long_line(length, content, side):
    """One padded line, long enough that the padding's weights must be summed rather than bounded."""
    rng = np.random.default_rng(length)
    offset = (length - content) // 2
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    pixels = rng.integers(0, 256, (content, 3), dtype=np.uint8)
    line = np.empty((1, length, 3), dtype=np.uint8)
    line[...] = colour
    line[0, offset : offset + content] = pixels
    expected = np.asarray(PIL.Image.fromarray(line).resize((side, 1), PIL.Image.Resampling.BICUBIC))[0]
    axis = AxisResampling(length, side, PIL.Image.Resampling.BICUBIC)
    image_part = (offset, offset + content, lambda b, e: pixels[b - offset : e - offset])
    result = resample_axis(axis, 0, side, image_part, 3, colour)
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("size", [(20_000, 1), (1, 20_000), (60_000, 3)])
def test_thin_image_never_allocates_the_square(size, monkeypatch):
    """The issue's 143-byte 20000x1 PNG took 1.9 GB: the square of side 20000 was built before the resize."""
    largest = []
    new, fromarray = PIL.Image.new, PIL.Image.fromarray

    def spy_new(mode, image_size, *args, **kwargs):
        largest.append(image_size[0] * image_size[1])
        if largest[-1] > 4 * 1536 * 1536:
            raise MemoryError(f"a {image_size} image was allocated")
        return new(mode, image_size, *args, **kwargs)

    def spy_fromarray(array, *args, **kwargs):
        largest.append(array.shape[0] * array.shape[1])
        return fromarray(array, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "new", spy_new)
    monkeypatch.setattr(PIL.Image, "fromarray", spy_fromarray)
    image = new("RGB", size, (200, 30, 90))
    pixel_values = ConvLlavaImageProcessor(resolution=1536)(image, return_tensors="pt")["pixel_values"]
    assert max(largest) <= 4 * 1536 * 1536
    assert pixel_values.shape == (1, 3, 1536, 1536)


@pytest.mark.parametrize("mode", ["pad", "preserve"])
@pytest.mark.parametrize("size", [(padded_resize.MAX_LONG_SIDE + 1, 1), (2, padded_resize.MAX_LONG_SIDE + 1)])
def test_sides_longer_than_the_bound_are_refused_in_both_modes(size, mode):
    """Pillow itself fails on 89478485x1 (MemoryError) and needs gigabytes for 1x89478485 in "preserve" mode."""
    image = PIL.Image.new("RGB", size)
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]} pixels; sides longer than 1048576 pixels are refused"):
        ConvLlavaImageProcessor(resolution=64, image_aspect_ratio=mode)(image)
    with pytest.raises(ValueError, match=r"longer side is at most 1048576 pixels.*preserve"):
        pad_to_square_and_resize(image, 64, (0, 0, 0), PIL.Image.Resampling.BICUBIC)


def test_a_file_with_too_long_a_side_is_refused_before_decoding(tmp_path):
    path = tmp_path / "thin.png"
    PIL.Image.new("RGB", (1, padded_resize.MAX_LONG_SIDE + 1)).save(path)
    decoded = []
    original_load = PIL.ImageFile.ImageFile.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))
        with pytest.raises(ValueError, match="sides longer than 1048576 pixels are refused"):
            ConvLlavaImageProcessor(resolution=64)(str(path))
    assert not decoded
