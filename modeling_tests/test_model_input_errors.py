"""Bad model input gets a clear error (or a warning) instead of NaN logits, a wrong crop or a bare IndexError."""

import re

import pytest
import torch

from tiny_models import TINY_IMAGE_TOKEN_ID, TINY_TEXT, tiny_model

VOCAB_SIZE = TINY_TEXT["vocab_size"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def image_prompt(num_images: int = 1) -> torch.Tensor:
    return torch.tensor([[1, 11] + ([TINY_IMAGE_TOKEN_ID] * 16 + [12]) * num_images])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_pixel_is_refused_naming_the_image(model, bad_value):
    pixels = torch.randn(2, 3, 256, 256)
    pixels[1, 2, 100, 7] = bad_value
    with pytest.raises(ValueError, match=r"pixel_values of image\(s\) \[1\] hold NaN or Inf"):
        model(input_ids=image_prompt(2), pixel_values=pixels)
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] hold NaN or Inf"):
        model.generate(input_ids=image_prompt(2), pixel_values=pixels, max_new_tokens=2, do_sample=False)


def test_non_finite_pixel_in_a_list_of_mixed_sizes_names_its_input_position(model):
    images = [torch.randn(3, 128, 256), torch.randn(3, 256, 128), torch.randn(3, 128, 256)]
    images[2][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[2\] hold NaN or Inf"):
        model.get_image_features(pixel_values=images)


def test_non_finite_padding_outside_image_sizes_is_never_encoded_so_accepted(model):
    pixels = torch.randn(1, 3, 256, 256)
    pixels[0, :, 200:, :] = float("nan")  # padding below a 128-row image
    features = model.get_image_features(pixel_values=pixels, image_sizes=[[128, 256]]).pooler_output
    assert torch.isfinite(features[0]).all()


@pytest.mark.parametrize(
    "image_sizes",
    [
        [[-64, 256]],
        torch.tensor([[128, -128]]),
        [[0, 256]],
        [[320, 256]],
        [[128.0, 256.0]],
        torch.tensor([[128.0, 256.0]]),
        [[128, 256, 3]],
        torch.tensor([[128, 256, 3]]),
        torch.tensor([128, 256]),
        [[128, 256], [128, 256]],
    ],
)
def test_malformed_image_sizes_are_refused_with_what_was_wrong(model, image_sizes):
    described = (
        re.escape(f"a tensor {tuple(image_sizes.shape)} of {image_sizes.dtype}")
        if isinstance(image_sizes, torch.Tensor)
        else re.escape(str(image_sizes))
    )
    message = (
        r"one \(height, width\) pair of positive integers per image of pixel_values \(1\), within its canvas "
        rf"\(256, 256\); got {described}"
    )
    with pytest.raises(ValueError, match=message):
        model.get_image_features(pixel_values=torch.randn(1, 3, 256, 256), image_sizes=image_sizes)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused_saying_to_use_the_processor(model, dtype):
    raw = torch.randint(0, 256, (1, 3, 256, 256)).to(dtype)
    message = rf"pixel_values hold {dtype} values; the model takes the normalised float pixels that ConvLlavaProcessor"
    with pytest.raises(ValueError, match=message):
        model(input_ids=image_prompt(), pixel_values=raw)
    with pytest.raises(ValueError, match=message):
        model.get_image_features(pixel_values=[torch.randn(3, 128, 128), raw[0]])
