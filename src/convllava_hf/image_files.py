"""
Images from files, bytes, base64 data and http(s) URLs, opened with clear errors: sizes are checked from the header
before any pixel is decoded, only regular files are read, URL fetches have a deadline, and a PNG holding fewer pixel
rows than it declares is refused rather than padded with black.
"""

import base64
import binascii
import io
import os
import stat
import struct
import time
import urllib.error
import urllib.request
import warnings
import zlib

import numpy as np
import PIL.Image
import PIL.ImageOps

from .padded_resize import MAX_LONG_SIDE

URL_TIMEOUT_S = 20.0  # deadline of one image URL fetch, connecting included
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_pixel_count(height: int, width: int) -> None:
    """Refuse empty images, sides over `MAX_LONG_SIDE` and more pixels than `PIL.Image.MAX_IMAGE_PIXELS`."""
    if height == 0 or width == 0:
        raise ValueError(f"Got an empty image ({width}x{height} pixels).")
    if max(height, width) > MAX_LONG_SIDE:
        raise ValueError(
            f"The image is {width}x{height} pixels; sides longer than {MAX_LONG_SIDE} pixels are refused (resizing "
            "costs grow with the longer side, whatever the pixel count). Crop or shrink the image."
        )
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        raise ValueError(
            f"The image has {width}x{height} = {width * height} pixels, more than PIL's decompression-bomb limit "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit}; raise that limit if the image is trusted."
        )


def _check_regular_file(path: str | os.PathLike, name: str) -> None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"No image file at {name}: the path does not exist.") from None
    except OSError as error:
        raise ValueError(f"Cannot read {name}: {error.strerror}.") from error
    if stat.S_ISDIR(status.st_mode):
        raise ValueError(f"{name} is a directory, not an image file.")
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{name} is not a regular file (a FIFO, socket or device): only image files are read.")


def _png_pixel_bytes(stream: io.BufferedIOBase) -> tuple[int, int] | None:
    """
    (bytes of filtered pixel data the PNG declares, bytes its IDAT chunks inflate to, counted up to the former), read
    chunk by chunk; None when it is not a well-formed PNG or its data is cut off (Pillow then reports the problem).
    """
    if stream.read(8) != PNG_SIGNATURE:
        return None
    expected, inflated, inflater = None, 0, zlib.decompressobj()
    while (header := stream.read(8)) and len(header) == 8:
        length, kind = struct.unpack(">I4s", header)
        data = stream.read(length)
        stream.read(4)  # CRC, checked by Pillow
        if kind == b"IHDR" and len(data) == 13:
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data)
            bits = depth * PNG_CHANNELS.get(colour, 1)
            passes = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
            sizes = [(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in passes]
            expected = sum(rows * (1 + -(-cols * bits // 8)) for cols, rows in sizes if cols > 0 and rows > 0)
        elif kind == b"IDAT" and expected is not None:
            try:
                while data and inflated < expected:
                    inflated += len(inflater.decompress(data, 1 << 20))
                    data = inflater.unconsumed_tail
            except zlib.error:
                return None
            if inflated >= expected:
                break
        elif kind == b"IEND":
            break
    if expected is None or (inflated < expected and not inflater.eof):  # cut off mid-stream: Pillow reports it
        return None
    return expected, inflated


def _check_png_rows(image: PIL.Image.Image, source, name: str) -> None:
    """Refuse a PNG whose complete pixel data stops short of its declared size (Pillow decodes the rest as black)."""
    if image.format != "PNG":
        return
    with open(source, "rb") if not isinstance(source, (bytes, bytearray)) else io.BytesIO(source) as stream:
        counts = _png_pixel_bytes(stream)
    if counts is not None and counts[1] < counts[0]:
        raise ValueError(
            f"Could not decode an image from {name}: truncated, corrupt or not an image (a PNG whose "
            f"{image.width}x{image.height} pixels need {counts[0]} bytes of pixel data holds {counts[1]})."
        )


def _detail(error: BaseException, source, name: str) -> str:
    """Pillow's message, with the path it names (e.g. Gradio's upload cache) replaced by `name`."""
    text = str(error)
    if not isinstance(source, (bytes, bytearray)):
        text = text.replace(repr(os.fspath(source)), name).replace(os.fspath(source), name)
    return text


def _opened(source: str | os.PathLike | bytes | bytearray, name: str | None) -> tuple[PIL.Image.Image, str]:
    """The lazily opened image (header read, size checked) and the name errors give it."""
    if isinstance(source, (bytes, bytearray)):
        name = name or "the given bytes"
    else:
        name = name or repr(os.fspath(source))
        _check_regular_file(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"Refusing to decode {name}: {error} (PIL.Image.MAX_IMAGE_PIXELS = {PIL.Image.MAX_IMAGE_PIXELS})."
        ) from error
    except (OSError, SyntaxError) as error:
        raise ValueError(
            f"Could not decode an image from {name}: corrupt or not an image ({_detail(error, source, name)})."
        ) from error
    if max(image.size) > MAX_LONG_SIDE:  # refused from the header, before decoding
        check_pixel_count(image.height, image.width)
    return image, name


def _ends_in_a_blank_row(image: PIL.Image.Image) -> bool:
    """
    Whether a decoded PNG's last row, or the one before it (the last of Adam7's final pass), is all zero bytes, as
    Pillow leaves the rows its pixel data does not reach: only such a PNG needs `_check_png_rows`, whose second inflate
    of the pixel data would otherwise nearly double the cost of every PNG.
    """
    if image.format != "PNG":
        return False
    width, height = image.size
    tail = image.crop((0, max(height - 2, 0), width, height)).tobytes()
    row = len(tail) // min(height, 2)
    return any(not tail[start : start + row].strip(b"\0") for start in range(0, len(tail), row))


def _decoded(image: PIL.Image.Image, source, name: str) -> PIL.Image.Image:
    try:
        image.load()
        if _ends_in_a_blank_row(image):
            _check_png_rows(image, source, name)
    except (OSError, SyntaxError) as error:
        raise ValueError(
            f"Could not decode an image from {name}: truncated, corrupt or not an image "
            f"({_detail(error, source, name)})."
        ) from error
    except MemoryError as error:  # e.g. Pillow's PNG decoder on a row of tens of millions of pixels
        raise ValueError(f"Pillow ran out of memory decoding {name}.") from error
    return image


def open_image(source: str | os.PathLike | bytes | bytearray, name: str | None = None) -> PIL.Image.Image:
    """
    Decode an image file or its bytes, turning PIL's errors and decompression-bomb warnings into `ValueError`;
    errors call the file `name` (default: its path).
    """
    image, label = _opened(source, name)
    return _decoded(image, source, label)


def upright_size(source: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(height, width) of the image with its EXIF orientation applied, read from the header only."""
    image, _ = _opened(source, name)
    with image:
        # a PNG's EXIF may follow its pixel data, which Pillow would decode to find it: only a leading one counts
        exif = image.getexif() if image.format != "PNG" else PIL.Image.Exif()
        if image.format == "PNG" and "exif" in image.info:
            exif.load(image.info["exif"])
        if exif.get(0x0112) in ROTATING_ORIENTATIONS:
            return image.width, image.height
        return image.height, image.width


def open_reduced(source: str | os.PathLike, max_side: int, name: str | None = None) -> PIL.Image.Image:
    """
    The image as `upright_rgb` gives it, decoded (JPEG, `Image.draft`) or reduced (`Image.reduce`) by an integer
    factor that keeps its longer side at least `max_side`: a picture for display, not model input.
    """
    image, label = _opened(source, name)
    image.draft("RGB", (max_side, max_side))
    image = _decoded(image, source, label)
    if image.mode in (*SIXTEEN_BIT_MODES, "P", "1"):  # modes `reduce` does not take
        image = upright_rgb(image)
    factor = max(image.size) // max_side
    return upright_rgb(image.reduce(factor) if factor > 1 else image)


def upright_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """
    Apply the EXIF orientation and make the image RGB with `convert("RGB")`, as the original loader did (an alpha
    channel is dropped, not composited). 16-bit greyscale (0..65535) is first mapped to 8 bits (0..255); a 32-bit
    integer image (mode "I") is read as 8-bit levels when all its values fit 0..255, else as 16-bit.
    """
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = np.rint(values / 257.0)
        image = PIL.Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def fetch_url(url: str, timeout: float | None = None) -> bytes:
    """The body of an http(s) URL, or a `ValueError` when it fails or takes longer than `timeout` (`URL_TIMEOUT_S`)."""
    timeout = URL_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    body = bytearray()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                body += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError("the body did not arrive in time")
    except urllib.error.HTTPError as error:
        answer = f"the server answered {error.code} {error.reason}"
        raise ValueError(f"Could not fetch the image {url}: {answer}.") from error
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            reason = f"no complete answer within {timeout:g} s"
        raise ValueError(
            f"Could not fetch the image {url}: {reason}. Check the address, or download the image and pass the file."
        ) from error
    return bytes(body)


def _base64_bytes(text: str) -> bytes | None:
    data = text.split(",", 1)[-1] if text.startswith("data:") else text
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def load_image_source(source: str) -> PIL.Image.Image:
    """
    Decode the image a string names, as `transformers.image_utils.load_image` reads it: an http(s) URL (fetched with
    a deadline), a path to a regular file, or base64 data (a `data:` URI or bare); size checks come before decoding.
    """
    if source.startswith(("http://", "https://")):
        return open_image(fetch_url(source), name=source)
    if os.path.lexists(source):
        return open_image(source)
    data = _base64_bytes(source)
    if data is None:
        shown = source if len(source) <= 200 else f"{source[:200]}..."
        raise ValueError(f"No image at {shown!r}: it is not an existing file, an http(s) URL or base64 image data.")
    return open_image(data, name="the base64 image data")


def open_source(source: str | os.PathLike | bytes | bytearray) -> PIL.Image.Image:
    """An image from a path, bytes, base64 data or an http(s) URL (`load_image_source` for strings), checked."""
    return load_image_source(source) if isinstance(source, str) else open_image(source)


def checked_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` upright and RGB (`upright_rgb`) after `check_pixel_count`."""
    check_pixel_count(image.height, image.width)
    return upright_rgb(image)
