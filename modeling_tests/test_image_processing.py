"""ConvLlavaImageProcessor: original-exact "pad" mode, "preserve" mode, input kinds, token counts and bad inputs."""

import io
import math
from fractions import Fraction

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoImageProcessor, LlavaImageProcessorPil
from transformers.image_processing_utils import SizeDict

from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor
from tiny_models import FIXTURE_DIR

IMAGES = FIXTURE_DIR / "images"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_DIR / "reference" / "reference.safetensors")


def gradient_image(width: int, height: int) -> PIL.Image.Image:
    """A deterministic, asymmetric RGB test image."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], axis=-1)
    return PIL.Image.fromarray(array.astype(np.uint8))


@pytest.mark.parametrize(
    "case, filename",
    [("case0", "landscape_320x200.png"), ("case1", "portrait_150x260.png"), ("case2", "square_256x256.png")],
)
def test_pad_mode_reproduces_original_pixel_values_exactly(reference, case, filename):
    processor = ConvLlavaImageProcessor(resolution=256)
    outputs = processor(PIL.Image.open(IMAGES / filename), return_tensors="pt")
    assert outputs["pixel_values"].dtype == torch.float32
    assert torch.equal(outputs["pixel_values"], reference[f"{case}.pixel_values"])
    assert outputs["image_sizes"].tolist() == [[256, 256]]
    assert outputs["image_sizes"].dtype == torch.long


def test_pad_mode_batch_equals_original_batch(reference):
    outputs = ConvLlavaImageProcessor(resolution=256)(
        [IMAGES / "landscape_320x200.png", IMAGES / "square_256x256.png"], return_tensors="pt"
    )
    expected = torch.cat([reference["case0.pixel_values"], reference["case2.pixel_values"]])
    assert torch.equal(outputs["pixel_values"], expected)


def test_paths_bytes_numpy_and_torch_inputs_match_pil():
    path = IMAGES / "landscape_320x200.png"
    image = PIL.Image.open(path).convert("RGB")
    array = np.array(image)
    processor = ConvLlavaImageProcessor(resolution=128, image_aspect_ratio="preserve")
    expected = processor(image, return_tensors="pt")["pixel_values"]
    for same_image in (str(path), path, path.read_bytes(), array, torch.from_numpy(array).permute(2, 0, 1)):
        assert torch.equal(processor(same_image, return_tensors="pt")["pixel_values"], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK", "I;16"])
def test_every_image_mode_becomes_three_channels(mode):
    image = gradient_image(40, 30).convert("L" if mode == "I;16" else mode)
    rgb = image.convert("RGB")  # PIL's own conversion (alpha dropped); for I;16, of the 8-bit levels it came from
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
        assert image.mode == "I;16"
    outputs = ConvLlavaImageProcessor(resolution=64)(image, return_tensors="pt")
    # reference: stock transformers' LLaVA processor (mean-colour square, bicubic, CLIP statistics) on that RGB image
    stock = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    assert torch.equal(outputs["pixel_values"], stock(rgb, return_tensors="pt")["pixel_values"])


def test_sixteen_bit_greyscale_maps_to_the_same_8_bit_levels():
    grey = gradient_image(40, 30).convert("L")
    sixteen_bit = PIL.Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    processor = ConvLlavaImageProcessor(resolution=64)
    assert torch.equal(
        processor(sixteen_bit, return_tensors="pt")["pixel_values"],
        processor(grey.convert("RGB"), return_tensors="pt")["pixel_values"],
    )


def test_alpha_channel_is_dropped_like_the_original_convert_rgb():
    transparent = PIL.Image.new("RGBA", (64, 64), (10, 200, 30, 0))
    processor = ConvLlavaImageProcessor(resolution=64)
    assert torch.equal(
        processor(transparent, return_tensors="pt")["pixel_values"],
        processor(PIL.Image.new("RGB", (64, 64), (10, 200, 30)), return_tensors="pt")["pixel_values"],
    )


def test_exif_orientation_is_applied():
    image = gradient_image(128, 64)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored sideways: the upright image is the stored one rotated 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    processor = ConvLlavaImageProcessor(resolution=128, image_aspect_ratio="preserve")
    outputs = processor(buffer.getvalue(), return_tensors="pt")
    upright = processor(image.transpose(PIL.Image.Transpose.ROTATE_270), return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [[128, 64]]
    assert torch.equal(outputs["pixel_values"], upright["pixel_values"])


def test_preserve_mode_resizes_without_padding_and_puts_content_top_left():
    image = PIL.Image.open(IMAGES / "landscape_320x200.png").convert("RGB")
    outputs = ConvLlavaImageProcessor(resolution=256, image_aspect_ratio="preserve")(image, return_tensors="pt")
    # 320x200 -> longer side 256, shorter 160 -> nearest multiple of 64 (2.5 units, halves up) = 192
    assert outputs["image_sizes"].tolist() == [[192, 256]]
    pixel_values = outputs["pixel_values"][0]
    assert pixel_values.shape == (3, 256, 256)
    resized = np.asarray(image.resize((256, 192), PIL.Image.Resampling.BICUBIC)) / 255.0
    expected = torch.from_numpy(((resized - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)).float()
    torch.testing.assert_close(pixel_values[:, :192], expected, atol=1e-6, rtol=0)
    assert not pixel_values[:, 192:].any()


def test_preserve_mode_outputs_of_separate_calls_always_stack():
    processor = ConvLlavaImageProcessor(resolution=128, image_aspect_ratio="preserve")
    landscape = processor(gradient_image(300, 100), return_tensors="pt")
    portrait = processor(gradient_image(50, 120), return_tensors="pt")
    batch = processor([gradient_image(300, 100), gradient_image(50, 120)], return_tensors="pt")
    assert landscape["pixel_values"].shape == portrait["pixel_values"].shape == (1, 3, 128, 128)
    assert torch.equal(torch.cat([landscape["pixel_values"], portrait["pixel_values"]]), batch["pixel_values"])
    assert batch["image_sizes"].tolist() == [[64, 128], [128, 64]]


def test_issue_example_3000x1000_photo():
    processor = ConvLlavaImageProcessor(resolution=1536, image_aspect_ratio="preserve")
    assert processor.content_size(1000, 3000) == (512, 1536)
    assert processor.num_image_tokens(1000, 3000) == 192
    assert processor.num_image_tokens(1000, 3000, image_aspect_ratio="pad") == 576
    assert ConvLlavaImageProcessor().num_image_tokens(1000, 3000) == 576


# Resolution 768, longer side 1000: a shorter side s scales to s * 768 / 1000 px, for these exactly k * 64 + 32, half
# way between two multiples of 64. Rounded halves up that is (k + 1) * 64; floor gives k * 64 on all four and
# round-half-even (Python's round) gives k * 64 on the even k (375, 875), so each of those rules fails here.
EXACT_HALVES = [(125, 1, 128), (375, 4, 320), (625, 7, 512), (875, 10, 704)]  # (shorter side, k, content side)


@pytest.mark.parametrize(("short", "k", "content"), EXACT_HALVES)
def test_preserve_mode_rounds_a_side_half_way_between_multiples_of_64_up(short, k, content):
    assert short * 768 == (64 * k + 32) * 1000 and content == 64 * (k + 1)  # the premise, in integers
    processor = ConvLlavaImageProcessor(resolution=768, image_aspect_ratio="preserve")
    assert processor.content_size(short, 1000) == (content, 768)
    assert processor.content_size(1000, short) == (768, content)
    assert processor.num_image_tokens(short, 1000) == processor.num_image_tokens(1000, short) == (k + 1) * 12


@pytest.mark.parametrize(("width", "height", "content"), [(1000, 375, (320, 768)), (625, 1000, (768, 512))])
def test_preserve_mode_resizes_an_exact_half_image_to_the_rounded_up_content_size(width, height, content):
    image = gradient_image(width, height)
    outputs = ConvLlavaImageProcessor(resolution=768, image_aspect_ratio="preserve")(image, return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [list(content)]
    rows, columns = content
    resized = np.asarray(image.resize((columns, rows), PIL.Image.Resampling.BICUBIC)) / 255.0
    expected = torch.from_numpy(((resized - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)).float()
    pixel_values = outputs["pixel_values"][0]
    torch.testing.assert_close(pixel_values[:, :rows, :columns], expected, atol=1e-6, rtol=0)
    assert pixel_values.shape == (3, 768, 768)
    assert not pixel_values[:, rows:].any() and not pixel_values[:, :, columns:].any()  # zero padding below and right


@settings(max_examples=400, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    units=st.integers(1, 32),
    mode=st.sampled_from(["pad", "preserve"]),
)
def test_token_count_formula_and_bound(height, width, units, mode):
    resolution = 64 * units
    processor = ConvLlavaImageProcessor(resolution=resolution, image_aspect_ratio=mode)
    content_height, content_width = processor.content_size(height, width)
    tokens = processor.num_image_tokens(height, width)
    assert tokens == (content_height // 64) * (content_width // 64)
    assert 1 <= tokens <= units**2
    for side, original in ((content_height, height), (content_width, width)):
        assert side % 64 == 0 and 64 <= side <= resolution
        if mode == "preserve":  # the multiple of 64 nearest to the scaled side (halves up), at least 64
            scaled = Fraction(original * resolution, max(height, width))
            assert side == 64 * max(1, math.floor(scaled / 64 + Fraction(1, 2)))
    if mode == "preserve":
        assert max(content_height, content_width) == resolution
    else:
        assert (content_height, content_width) == (resolution, resolution)


def test_token_counts_match_processed_image_sizes():
    processor = ConvLlavaImageProcessor(resolution=256, image_aspect_ratio="preserve")
    for width, height in [(1, 1), (7, 300), (300, 7), (100, 100), (255, 97), (640, 480)]:
        image_sizes = processor(gradient_image(width, height), return_tensors="pt")["image_sizes"]
        ((content_height, content_width),) = image_sizes.tolist()
        assert processor.num_image_tokens(height, width) == (content_height // 64) * (content_width // 64)


def test_save_and_reload_keeps_settings(tmp_path):
    processor = ConvLlavaImageProcessor(resolution=768, image_aspect_ratio="preserve")
    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is ConvLlavaImageProcessor
    assert (reloaded.resolution, reloaded.image_aspect_ratio) == (768, "preserve")
    assert reloaded.to_dict() == processor.to_dict()


@pytest.mark.parametrize("resolution", [0, -64, 100, 1000])
def test_resolution_must_be_a_positive_multiple_of_64(resolution):
    with pytest.raises(ValueError, match="multiple of 64"):
        ConvLlavaImageProcessor(resolution=resolution)
    with pytest.raises(ValueError, match="multiple of 64"):
        ConvLlavaImageProcessor()(gradient_image(8, 8), resolution=resolution)


def test_unknown_image_aspect_ratio_is_rejected():
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        ConvLlavaImageProcessor(image_aspect_ratio="anyres")
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        ConvLlavaImageProcessor()(gradient_image(8, 8), image_aspect_ratio="square")


def test_truncated_image_file_is_rejected(tmp_path):
    data = (IMAGES / "landscape_320x200.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        ConvLlavaImageProcessor()(str(truncated))
    with pytest.raises(ValueError, match="truncated"):
        ConvLlavaImageProcessor()(data[: len(data) // 2])


def test_non_image_file_is_rejected(tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    with pytest.raises(ValueError, match="not an image"):
        ConvLlavaImageProcessor()(text_file)
    with pytest.raises(ValueError, match="not an image"):
        ConvLlavaImageProcessor()(b"GIF89a but not really")


@pytest.mark.parametrize(
    "empty",
    [
        PIL.Image.new("RGB", (0, 10)),
        PIL.Image.new("RGB", (10, 0)),
        np.zeros((0, 10, 3), dtype=np.uint8),
        torch.zeros(3, 10, 0, dtype=torch.uint8),
    ],
)
def test_zero_size_image_is_rejected(empty):
    with pytest.raises(ValueError, match="empty image"):
        ConvLlavaImageProcessor()(empty)


def test_image_over_decompression_bomb_limit_is_rejected(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 40_000)
    processor = ConvLlavaImageProcessor(resolution=64)
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):  # 320x200: over the limit, where PIL only warns
        processor(IMAGES / "landscape_320x200.png")
    buffer = io.BytesIO()
    gradient_image(300, 300).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):  # over twice the limit, where PIL raises
        processor(buffer.getvalue())
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):  # an image decoded already
        processor(gradient_image(250, 200))
    assert processor(gradient_image(190, 190))["image_sizes"] == [[64, 64]]


def test_unit_range_floats_with_do_rescale_false_warn(caplog):
    """Such arrays become 8-bit (x255) like PIL images, so do_rescale=False leaves them 255 times too large."""
    from convllava_hf import image_processing_conv_llava

    image_processing_conv_llava.logger.warning_once.cache_clear()
    array = np.random.default_rng(0).random((40, 30, 3)).astype(np.float32)
    with caplog.at_level("WARNING"):
        ConvLlavaImageProcessor(resolution=64)(array, do_rescale=False)
    assert "between 0 and 1 and do_rescale=False" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        ConvLlavaImageProcessor(resolution=64)((array * 255).round().astype(np.uint8), do_rescale=False)
    assert "between 0 and 1" not in caplog.text


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 128}},
        {"size": 128},
        {"crop_size": 128},
        {"crop_size": {"height": 128, "width": 128}},
        {"size": {"height": 128, "width": 128}, "crop_size": 128, "resolution": 128},
        {"crop_size": SizeDict(height=128, width=128)},
    ],
)
def test_square_size_settings_set_the_resolution(settings):
    image = gradient_image(90, 50)
    expected = ConvLlavaImageProcessor(resolution=128)(image, return_tensors="pt")["pixel_values"]
    per_call = ConvLlavaImageProcessor(resolution=64)(image, return_tensors="pt", **settings)["pixel_values"]
    at_init = ConvLlavaImageProcessor(**settings)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(per_call, expected)
    assert torch.equal(at_init, expected)


def test_do_center_crop_false_is_honoured_as_nothing_is_cropped():
    image = gradient_image(90, 50)
    for mode in ("pad", "preserve"):
        processor = ConvLlavaImageProcessor(resolution=128, image_aspect_ratio=mode)
        assert torch.equal(
            processor(image, do_center_crop=False, return_tensors="pt")["pixel_values"],
            processor(image, return_tensors="pt")["pixel_values"],
        )


@pytest.mark.parametrize(
    "settings",
    [
        {"do_resize": False},
        {"size": {"height": 64, "width": 128}},
        {"size": {"longest_edge": 128}},
        {"size": 128, "crop_size": 192},
        {"size": 128, "resolution": 64},
    ],
)
def test_settings_that_cannot_be_honoured_raise_naming_resolution_and_image_aspect_ratio(settings):
    with pytest.raises(ValueError, match=r"`resolution`.*`image_aspect_ratio`"):
        ConvLlavaImageProcessor(resolution=64)(gradient_image(30, 20), **settings)
    with pytest.raises(ValueError, match=r"`resolution`.*`image_aspect_ratio`"):
        ConvLlavaImageProcessor(**settings)


def test_a_directory_is_named_as_such(tmp_path):
    from convllava_hf.image_files import open_image

    with pytest.raises(ValueError, match="is a directory, not an image file"):
        open_image(tmp_path)
    with pytest.raises(ValueError, match="is a directory, not an image file"):
        ConvLlavaImageProcessor(resolution=64)(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        open_image(tmp_path / "missing.png")


def test_image_mean_given_in_a_call_sets_that_calls_pad_colour():
    """The padding is int(mean * 255) per channel of the mean in use, then rescaled and normalised by hand here."""
    image = gradient_image(320, 200)  # at 64 px the top rows of the square see only padding
    mean, std = [0.5, 0.25, 0.9], [0.5, 0.5, 0.5]
    pixel_values = ConvLlavaImageProcessor(resolution=64)(image, image_mean=mean, image_std=std, return_tensors="pt")[
        "pixel_values"
    ][0]
    for channel in range(3):
        level = int(mean[channel] * 255)  # 127, 63, 229
        expected = (np.float32(level * (1 / 255)) - np.float32(mean[channel])) / np.float32(std[channel])
        assert torch.all(pixel_values[channel, :3] == torch.tensor(expected))
    default = ConvLlavaImageProcessor(resolution=64)(image, image_std=std, return_tensors="pt")["pixel_values"][0]
    assert not torch.equal(default[:, :3], pixel_values[:, :3])


def test_pillow_running_out_of_memory_while_decoding_is_a_clear_error(monkeypatch):
    """Pillow's PNG decoder raises a bare MemoryError on an 89478485x1 PNG (a few hundred bytes)."""
    from convllava_hf.image_files import open_image

    def load(self):
        raise MemoryError()

    monkeypatch.setattr(PIL.PngImagePlugin.PngImageFile, "load", load)
    with pytest.raises(ValueError, match="Pillow ran out of memory decoding"):
        open_image(IMAGES / "square_256x256.png")


def test_several_images_processed_inside_inference_mode_equal_those_processed_outside():
    images = [PIL.Image.new("RGB", (128, 64), (200, 30, 10)), PIL.Image.new("RGB", (64, 192), (5, 90, 250))]
    processor = ConvLlavaImageProcessor(resolution=256)
    expected = processor(images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():  # the worker threads used to write into an inference tensor outside inference mode
        inside = processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(inside, expected)
