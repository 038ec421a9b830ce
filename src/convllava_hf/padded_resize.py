"""
The original "pad" preprocessing (centre the image on a square of the mean colour, then resize the square with
Pillow) computed from the image alone, with memory and time bounded by the image and the output, never by the square.

Pillow's `Image.resize` is separable: a horizontal pass, rounded to 8 bits, then a vertical pass, each a weighted sum
with integer weights (22 fractional bits) that Pillow derives in double precision from the filter. Up to a longer
side of `PILLOW_PASS_PIXELS / resolution`, Pillow runs the two passes one at a time on a `resolution` x `long` canvas
(or strips of one), which is exact by construction. Beyond, numpy repeats Pillow's arithmetic (the weights step for
step, the sums exactly: every partial sum is an integer below 2**53), which equals Pillow bit for bit on builds that
do not fuse the filter's multiply-adds (x86-64 wheels); elsewhere a weight could rarely round the other way and move a
pixel by one level. Canvas rows and columns are constant, so an output whose window lies in the padding needs only the
sum of its weights.
"""

import functools
import math
from collections.abc import Callable

import numpy as np
import PIL.Image

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images
COEFFICIENT_BUDGET = 1 << 16  # weights evaluated per numpy step
WINDOW_BUDGET = 1 << 21  # input values (as float64) multiplied per numpy step
INTERMEDIATE_BUDGET = 1 << 26  # bytes of first-pass output kept whole for a tall image
MAX_LONG_SIDE = 1 << 20  # about 2 s of numpy passes on a 1x2**20 image
PILLOW_PASS_PIXELS = 1 << 24  # up to this long side * resolution, Pillow runs the passes on a partial canvas


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    inner = ((1.5 * x - 2.5) * x) * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


# Pillow's filters (Resample.c) whose arithmetic numpy reproduces exactly, with their supports
EXACT_FILTERS = {
    PIL.Image.Resampling.BICUBIC: (_bicubic, 2.0),
    PIL.Image.Resampling.BILINEAR: (_bilinear, 1.0),
    PIL.Image.Resampling.BOX: (_box, 0.5),
}


class AxisResampling:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis of `in_size` -> `out_size` (no box)."""

    def __init__(self, in_size: int, out_size: int, resample: PIL.Image.Resampling):
        self.in_size, self.out_size = in_size, out_size
        self.filter, support = EXACT_FILTERS[resample]
        # Pillow passes the box as C floats: (double)(in1 - in0) / outSize
        self.scale = float(np.float32(in_size)) / out_size
        self.filterscale = max(self.scale, 1.0)
        self.support = support * self.filterscale
        self.ksize = int(math.ceil(self.support)) * 2 + 1

    def weights(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """First input index (n,) and integer weights (n, ksize) as float64 of the outputs `start:stop`."""
        center = (np.arange(start, stop, dtype=np.float64) + 0.5) * self.scale
        first = np.maximum(np.trunc((center - self.support) + 0.5), 0.0)
        last = np.minimum(np.trunc((center + self.support) + 0.5), float(self.in_size))
        taps = np.arange(self.ksize, dtype=np.float64)
        positions = first[:, None] + taps
        weights = self.filter(((positions - center[:, None]) + 0.5) * (1.0 / self.filterscale))
        weights[positions >= last[:, None]] = 0.0
        total = np.cumsum(weights, axis=1)[:, -1]  # Pillow's sequential sum
        np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
        weights *= 1 << PRECISION_BITS
        weights += np.where(weights < 0, -0.5, 0.5)
        return first.astype(np.int64), np.trunc(weights, out=weights)

    @functools.cached_property
    def totals(self) -> np.ndarray:
        """The sum of each output's integer weights."""
        count = max(1, COEFFICIENT_BUDGET // self.ksize)
        steps = range(0, self.out_size, count)
        return np.concatenate([self.weights(step, min(step + count, self.out_size))[1].sum(axis=1) for step in steps])

    def padding_outputs(self, outputs: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """The values (len(outputs), len(pad)) of outputs whose window sees only padding of values `pad`."""
        if self.ksize * 255 < 1 << PRECISION_BITS:
            # each rounded weight is off by at most 1/2, so the weights sum to 2**22 within ksize / 2: the padding
            # comes out unchanged, without computing a weight
            return np.broadcast_to(pad, (len(outputs), len(pad)))
        sums = self.totals[outputs, None] * pad.astype(np.float64)[None, :] + (1 << (PRECISION_BITS - 1))
        return np.clip(np.floor(sums / (1 << PRECISION_BITS)), 0, 255).astype(np.uint8)

    def outputs_touching(self, start: int, stop: int) -> tuple[int, int]:
        """A range of outputs that contains every output whose window meets the inputs `start:stop`."""
        low = max(0, math.floor((start - self.support - 1) / self.scale) - 1)
        high = min(self.out_size, math.ceil((stop + self.support + 1) / self.scale) + 1)
        return low, max(low, high)


Values = Callable[[int, int], np.ndarray]


def resample_axis(
    axis: AxisResampling,
    start: int,
    stop: int,
    content: tuple[int, int, Values] | None,
    width: int,
    pad: np.ndarray | None = None,
    weights: list[tuple[int, np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """
    Outputs `start:stop` (uint8, shape (n, width)) of Pillow's 8-bit resampling along a line of `axis.in_size`
    positions, each holding `width` values: `content = (begin, end, values)` covers positions `begin:end`
    (`values(b, e)` gives those of `b:e` as uint8 of shape (e - b, width)), `pad` (`width` values) all others.
    `weights` are precomputed `(step, first, weights)` of `axis.weights` in the steps this function takes.
    """
    content_begin, content_end, values = content or (0, 0, None)
    result = np.empty((stop - start, width), dtype=np.uint8)
    low, high = axis.outputs_touching(content_begin, content_end) if content else (start, start)
    low, high = min(max(low, start), stop), min(max(high, start), stop)
    if pad is not None:
        outside = np.r_[start:low, high:stop]
        result[outside - start] = axis.padding_outputs(outside, pad)
    pad = None if pad is None else pad.astype(np.float64)
    for step, first, step_weights in weights or _steps(axis, low, high, width):
        count = len(first)
        sums = np.zeros((count, width))
        begin = max(int(first[0]), content_begin)
        end = min(int(first[-1]) + axis.ksize, content_end)
        content_weight = 0.0
        if begin < end:
            positions = first[:, None] + np.arange(axis.ksize)
            inside = (positions >= begin) & (positions < end)
            block = np.zeros((count, end - begin))
            block[np.nonzero(inside)[0], positions[inside] - begin] = step_weights[inside]
            sums += block @ values(begin, end).astype(np.float64)
            content_weight = block.sum(axis=1)
        if pad is not None:
            sums += (step_weights.sum(axis=1) - content_weight)[:, None] * pad[None, :]
        sums += 1 << (PRECISION_BITS - 1)
        sums /= 1 << PRECISION_BITS  # exact: a power of two
        result[step - start : step - start + count] = np.clip(np.floor(sums), 0, 255)
    return result


def _steps(axis: AxisResampling, start: int, stop: int, width: int):
    """
    `(step, first, weights)` over `start:stop`, a few outputs at a time: for content `width` values wide, few
    enough that their joint window stays small; for padding alone (`width` 0), as many as the weights budget allows.
    """
    by_weights = COEFFICIENT_BUDGET // axis.ksize
    by_window = (WINDOW_BUDGET / width - axis.ksize) / axis.scale if width else by_weights
    # about two windows' worth of outputs per step keeps a third of each product's weights non-zero
    by_density = math.ceil(2 * axis.ksize / axis.scale) if width else by_weights
    count = max(1, min(by_weights, int(by_window), by_density))
    for step in range(start, stop, count):
        yield (step, *axis.weights(step, min(step + count, stop)))


def pad_to_square_and_resize(
    image: PIL.Image.Image, side: int, colour: tuple[int, int, int], resample: PIL.Image.Resampling
) -> PIL.Image.Image:
    """
    `image` (RGB) centred on a square of `colour` (offset `(long - short) // 2`) and resized to `side` x `side`:
    `square.resize((side, side), resample)` for that square, bit for bit, without building it.
    """
    width, height = image.size
    long = max(width, height)
    if width == height:
        return image.resize((side, side), resample=resample)
    if long > MAX_LONG_SIDE:
        raise ValueError(
            f"image_aspect_ratio='pad' takes images whose longer side is at most {MAX_LONG_SIDE} pixels (the work "
            f"grows with it); got {width}x{height}. Crop or shrink the image, or use image_aspect_ratio='preserve'."
        )
    if side == long:  # Pillow returns the square unchanged
        output = np.empty((side, side, 3), dtype=np.uint8)
        output[...] = colour
        top, left = (long - height) // 2, (long - width) // 2
        output[top : top + height, left : left + width] = np.asarray(image)
        return PIL.Image.fromarray(output)
    if long * side <= PILLOW_PASS_PIXELS:
        return _by_pillow_passes(image, side, colour, resample)
    if resample not in EXACT_FILTERS:
        names = ", ".join(PIL.Image.Resampling(f).name for f in EXACT_FILTERS)
        raise ValueError(
            f"With image_aspect_ratio='pad', an image whose longer side is {long} pixels (more than "
            f"{PILLOW_PASS_PIXELS // side} at resolution {side}) is resized with the filters {names} only; got "
            f"resample={PIL.Image.Resampling(resample).name}. Use one of those or image_aspect_ratio='preserve'."
        )
    return _by_numpy_passes(image, side, colour, resample)


def _by_pillow_passes(
    image: PIL.Image.Image, side: int, colour: tuple[int, int, int], resample: PIL.Image.Resampling
) -> PIL.Image.Image:
    """Pillow's two passes run one at a time: the padded one on a `side` x `long` canvas (or strips of it)."""
    width, height = image.size
    long = max(width, height)
    offset = (long - min(width, height)) // 2
    if width > height:
        rows = np.asarray(image.resize((side, height), resample=resample))  # horizontal pass only
        pad_row = np.asarray(PIL.Image.new("RGB", (long, 1), colour).resize((side, 1), resample=resample))
        canvas = np.empty((long, side, 3), dtype=np.uint8)
        canvas[...] = pad_row
        canvas[offset : offset + height] = rows
        return PIL.Image.fromarray(canvas).resize((side, side), resample=resample)  # vertical pass only
    columns = np.empty((height, side, 3), dtype=np.uint8)
    strip_rows = max(1, PILLOW_PASS_PIXELS // (4 * long))
    for begin in range(0, height, strip_rows):
        strip = PIL.Image.new("RGB", (long, min(strip_rows, height - begin)), colour)
        strip.paste(image.crop((0, begin, width, begin + strip.height)), (offset, 0))
        columns[begin : begin + strip.height] = np.asarray(strip.resize((side, strip.height), resample=resample))
    return PIL.Image.fromarray(columns).resize((side, side), resample=resample)


def _by_numpy_passes(
    image: PIL.Image.Image, side: int, colour: tuple[int, int, int], resample: PIL.Image.Resampling
) -> PIL.Image.Image:
    """Pillow's two passes in numpy, computing each output position from the image pixels its window meets."""
    width, height = image.size
    long = max(width, height)
    pixels = np.asarray(image)  # (height, width, 3)
    colour_line = np.asarray(colour, dtype=np.uint8)
    top, left = (long - height) // 2, (long - width) // 2
    axis = AxisResampling(long, side, resample)
    # Pillow's first pass is horizontal; outputs whose window is all padding only need the weights' sums
    pad_line = resample_axis(axis, 0, side, None, 3, colour_line)  # a padding row (or column), resized
    if width > height:
        by_column = np.ascontiguousarray(pixels.transpose(1, 0, 2)).reshape(width, -1)
        rows = resample_axis(axis, 0, side, (0, width, lambda b, e: by_column[b:e]), height * 3)
        rows = rows.reshape(side, height, 3).transpose(1, 0, 2).reshape(height, -1)
        content = (top, top + height, lambda b, e: rows[b - top : e - top])
        output = resample_axis(axis, 0, side, content, side * 3, pad_line.reshape(-1))
        return PIL.Image.fromarray(output.reshape(side, side, 3))
    # tall: only the first-pass columns near the image differ from the padding column; the others are constant
    # down the canvas, so their second pass is again a padding line
    low, high = axis.outputs_touching(left, left + width)
    column_weights = list(_steps(axis, low, high, 3 * min(height, 1 << 12)))

    def first_pass(begin: int, end: int) -> np.ndarray:
        by_column = np.ascontiguousarray(pixels[begin:end].transpose(1, 0, 2)).reshape(width, -1)
        image_columns = (left, left + width, lambda b, e: by_column[b - left : e - left])
        pad = np.tile(colour_line, end - begin)
        columns = resample_axis(axis, low, high, image_columns, (end - begin) * 3, pad, column_weights)
        return columns.reshape(high - low, end - begin, 3).transpose(1, 0, 2).reshape(end - begin, -1)

    if (high - low) * height * 3 <= INTERMEDIATE_BUDGET:
        intermediate = first_pass(0, height)
        values = lambda b, e: intermediate[b:e]  # noqa: E731
    else:  # very tall and thin: recompute the first pass per window rather than hold all of it
        values = first_pass
    output = np.empty((side, side, 3), dtype=np.uint8)
    output[:, low:high] = resample_axis(axis, 0, side, (0, height, values), (high - low) * 3).reshape(side, -1, 3)
    outside = np.r_[0:low, high:side]
    if len(outside):
        constant = resample_axis(axis, 0, side, None, len(outside) * 3, pad_line[outside].reshape(-1))
        output[:, outside] = constant.reshape(side, len(outside), 3)
    return PIL.Image.fromarray(output)


def resized_padded_square(pixels: np.ndarray, side: int, colour: tuple[int, int, int], resample) -> np.ndarray:
    """`pad_to_square_and_resize` of channels-first uint8 RGB `pixels`, as channels-first uint8 (3, side, side)."""
    image = PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels, 0, -1)))
    return np.moveaxis(np.asarray(pad_to_square_and_resize(image, side, colour, PIL.Image.Resampling(resample))), -1, 0)
