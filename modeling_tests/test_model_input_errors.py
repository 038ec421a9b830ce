"""Bad model input gets a clear error (or a warning) instead of NaN logits, a wrong crop or a bare IndexError."""

import logging

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
    ("image_sizes", "message"),
    [
        ([[-64, 256]], r"image_sizes must be positive, got \(-64, 256\) for image 0"),
        (torch.tensor([[128, -128]]), r"image_sizes must be positive, got \(128, -128\) for image 0"),
        ([[0, 256]], r"image_sizes must be positive, got \(0, 256\)"),
        ([[128.0, 256.0]], r"one \(height, width\) pair of integers per image, got \[\[128.0, 256.0\]\]"),
        (torch.tensor([[128.0, 256.0]]), r"pair of integers per image, got a tensor \(1, 2\) of torch.float32"),
        ([[128, 256, 3]], r"one \(height, width\) pair of integers per image, got \[\[128, 256, 3\]\]"),
        (torch.tensor([[128, 256, 3]]), r"pair of integers per image, got a tensor \(1, 3\) of torch.int64"),
        (torch.tensor([128, 256]), r"pair of integers per image, got a tensor \(2,\) of torch.int64"),
        ([[128, 256], [128, 256]], r"Got 2 image_sizes for 1 images"),
    ],
)
def test_malformed_image_sizes_are_refused_with_what_was_wrong(model, image_sizes, message):
    with pytest.raises(ValueError, match=message):
        model.get_image_features(pixel_values=torch.randn(1, 3, 256, 256), image_sizes=image_sizes)


@pytest.mark.parametrize(
    ("bad_id", "extra"),
    [(-200, "original ConvLLaVA's image placeholder"), (-1, ""), (VOCAB_SIZE, ""), (VOCAB_SIZE + 100, "")],
)
def test_out_of_vocabulary_ids_are_refused_naming_the_id_and_the_vocabulary_size(model, bad_id, extra):
    input_ids = torch.tensor([[1, 11, bad_id, 12]])
    expected = rf"input_ids hold \[{bad_id}\], outside the vocabulary of {VOCAB_SIZE} ids \[0, {VOCAB_SIZE}\)"
    with pytest.raises(ValueError, match=expected) as error:
        model(input_ids=input_ids)
    assert extra in str(error.value)
    with pytest.raises(ValueError, match=expected):
        model.generate(input_ids=input_ids, max_new_tokens=2, do_sample=False)


def test_original_placeholder_with_an_image_is_refused_before_the_token_count_check(model):
    with pytest.raises(ValueError, match=r"\[-200\].*expand each <image> into image tokens \(id 800\)"):
        model(input_ids=torch.tensor([[1, 11, -200, 12]]), pixel_values=torch.randn(1, 3, 256, 256))


def test_prompt_longer_than_max_position_embeddings_warns_once_naming_both_lengths(model, caplog):
    max_positions = TINY_TEXT["max_position_embeddings"]
    too_long = torch.randint(3, 700, (1, max_positions + 3))
    with caplog.at_level(logging.WARNING, logger="convllava_hf"):
        model(input_ids=too_long)
        model(input_ids=too_long)
        model(input_ids=too_long[:, :max_positions])  # fits: no warning
    warnings = [record.getMessage() for record in caplog.records if "max_position_embeddings" in record.getMessage()]
    assert len(warnings) == 1
    assert f"{max_positions + 3} tokens" in warnings[0] and f"max_position_embeddings ({max_positions})" in warnings[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_input_ids_that_are_not_integers_are_refused_naming_the_dtype(model, dtype):
    with pytest.raises(ValueError, match=rf"input_ids must be integer token ids \(torch.long\), got {dtype}"):
        model(input_ids=torch.tensor([[1, 11, 12]]).to(dtype))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused_saying_to_use_the_processor(model, dtype):
    raw = torch.randint(0, 256, (1, 3, 256, 256)).to(dtype)
    message = rf"pixel_values hold {dtype} values; the model takes the normalised float pixels that ConvLlavaProcessor"
    with pytest.raises(ValueError, match=message):
        model(input_ids=image_prompt(), pixel_values=raw)
    with pytest.raises(ValueError, match=message):
        model.get_image_features(pixel_values=[torch.randn(3, 128, 128), raw[0]])
