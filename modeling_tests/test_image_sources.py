"""Images the processor, the chat template and `convllava-chat --image` open: FIFOs, URLs, base64, odd pixel formats."""

import base64
import io
import os
import socket
import struct
import threading
import time
import zlib

import numpy as np
import PIL.Image
import pytest

from convllava_hf import image_files
from convllava_hf.cli.chat import open_image_argument
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor

HANG_GUARD_S = 15  # a call still running after this long is taken to hang


def _finishes(call, guard_s: float = HANG_GUARD_S):
    """`call()`'s exception (or None), asserting it returns within `guard_s` (a daemon thread takes a hang)."""
    outcome = {}

    def run():
        try:
            call()
        except BaseException as error:  # noqa: B036 (SystemExit included)
            outcome["error"] = error
        outcome["done"] = True

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(guard_s)
    assert outcome.get("done"), f"still blocked after {guard_s} s"
    return outcome.get("error")


@pytest.fixture
def processor():
    return ConvLlavaImageProcessor(resolution=128)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "image.png"
    os.mkfifo(path)
    yield path
    try:  # releases a reader still blocked on it (the unfixed behaviour)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_is_refused_as_not_a_regular_file_without_blocking(processor, fifo):
    error = _finishes(lambda: processor(images=str(fifo)))
    assert isinstance(error, ValueError) and "not a regular file" in str(error)
    error = _finishes(lambda: open_image_argument(fifo))
    assert isinstance(error, SystemExit) and "--image:" in str(error) and "not a regular file" in str(error)


def test_an_image_url_whose_server_never_answers_fails_after_the_timeout(processor, monkeypatch):
    monkeypatch.setattr(image_files, "URL_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) and never sends a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cat.png"
        started = time.monotonic()
        error = _finishes(lambda: processor(images=url))
        elapsed = time.monotonic() - started
    assert isinstance(error, ValueError) and f"Could not fetch the image {url}" in str(error)
    assert "no complete answer within 0.5 s" in str(error) and elapsed < 5


def test_a_refused_connection_is_a_clear_error(processor):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _finishes(lambda: processor(images=f"http://127.0.0.1:{port}/cat.png"))
    assert isinstance(error, ValueError) and "Connection refused" in str(error)


def _png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_base64_image_over_the_pixel_limit_is_refused_from_its_header(processor, monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10_000)  # 120x120 = 14400: a warning to PIL, not its error
    data = base64.b64encode(_png_bytes(PIL.Image.new("RGB", (120, 120), (9, 9, 9)))).decode()
    decoded = []
    real_load = PIL.ImageFile.ImageFile.load
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or real_load(image))
    for source in (data, f"data:image/png;base64,{data}"):
        with pytest.raises(ValueError, match="Refusing to decode the base64 image data"):
            processor(images=source)
    assert decoded == []


def test_a_16_bit_png_gives_the_same_pixels_as_base64_as_from_a_path(processor, tmp_path):
    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)).save(path)  # 32896 / 257 = 128
    assert PIL.Image.open(path).mode == "I;16"
    data = base64.b64encode(path.read_bytes()).decode()
    from_path = processor(images=str(path), return_tensors="pt")["pixel_values"]
    expected = processor(images=PIL.Image.new("RGB", (64, 64), (128, 128, 128)), return_tensors="pt")["pixel_values"]
    assert from_path.equal(expected)
    assert processor(images=data, return_tensors="pt")["pixel_values"].equal(expected)


def test_a_16_bit_png_gives_the_same_pixels_as_base64_as_from_a_path_in_the_chat_template(demo_processor, tmp_path):
    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)).save(path)
    data = base64.b64encode(path.read_bytes()).decode()

    def pixels(image_entry: dict):
        messages = [{"role": "user", "content": [{"type": "image", **image_entry}, {"type": "text", "text": "Hi"}]}]
        inputs = demo_processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        return inputs["pixel_values"]

    assert pixels({"base64": data}).equal(pixels({"path": str(path)}))


@pytest.fixture(scope="module")
def demo_processor():
    from convllava_hf.cli.demo import build_demo_model_and_processor

    return build_demo_model_and_processor()[1]


def test_a_32_bit_tiff_holding_8_bit_levels_keeps_them(processor, tmp_path):
    path = tmp_path / "levels.tiff"
    PIL.Image.fromarray(np.full((32, 32), 200, dtype=np.int32), mode="I").save(path)
    assert PIL.Image.open(path).mode == "I"
    expected = processor(images=PIL.Image.new("RGB", (32, 32), (200, 200, 200)), return_tensors="pt")["pixel_values"]
    assert processor(images=str(path), return_tensors="pt")["pixel_values"].equal(expected)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_holding_fewer_rows_than_it_declares_is_refused(processor, tmp_path):
    width = height = 900
    one_row = zlib.compress(b"\x00" + b"\x80" * (3 * width))  # a complete zlib stream: Pillow pads with black
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path = tmp_path / "one_row.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", one_row) + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match=r"truncated PNG, its 900x900 pixels need 2430900 bytes .* holds 2701"):
        processor(images=str(path))
    with pytest.raises(ValueError, match="truncated PNG"):
        processor(images=path.read_bytes())


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "1"])
def test_complete_pngs_of_every_mode_still_load(mode, tmp_path):
    path = tmp_path / f"{mode}.png"
    PIL.Image.new(mode, (37, 23)).save(path)
    assert image_files.open_image(path).size == (37, 23)
