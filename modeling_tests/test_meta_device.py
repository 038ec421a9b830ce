"""Shape inference on the meta device: image features and a forward with images count tokens without any values."""

import torch

from tiny_models import TINY_IMAGE_TOKEN_ID, TINY_TEXT, tiny_config
from convllava_hf import ConvLlavaForConditionalGeneration


def meta_model() -> ConvLlavaForConditionalGeneration:
    with torch.device("meta"):
        return ConvLlavaForConditionalGeneration(tiny_config())


def test_image_features_on_meta_give_one_token_per_64_pixel_cell():
    model = meta_model()
    images = [torch.empty(3, 128, 256, device="meta"), torch.empty(3, 256, 256, device="meta")]
    features = model.model.get_image_features(pixel_values=images).pooler_output
    assert [tuple(feature.shape) for feature in features] == [(2 * 4, 64), (4 * 4, 64)]
    assert all(feature.device.type == "meta" for feature in features)


def test_forward_with_images_on_meta_gives_logits_of_the_prompt_shape():
    model = meta_model()
    input_ids = torch.tensor([[1, 11] + [TINY_IMAGE_TOKEN_ID] * 16 + [12]], device="meta")
    logits = model(input_ids=input_ids, pixel_values=torch.empty(1, 3, 256, 256, device="meta")).logits
    assert tuple(logits.shape) == (1, 19, TINY_TEXT["vocab_size"]) and logits.device.type == "meta"


def test_image_features_on_meta_crop_a_padded_batch_to_its_list_of_image_sizes():
    """As benchmarks/cost_model.py counts a mixed-size batch: sizes as a list, the NaN check skipped on meta."""
    model = meta_model()
    pixels = torch.empty(2, 3, 256, 256, device="meta")
    features = model.model.get_image_features(pixel_values=pixels, image_sizes=[[128, 256], [256, 192]]).pooler_output
    assert [tuple(feature.shape) for feature in features] == [(2 * 4, 64), (4 * 3, 64)]
