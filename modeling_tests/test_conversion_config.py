"""Config conversion: what is carried over, what is tolerated, and what is refused with an explanation."""

import json

import pytest
import torch

from convllava_hf.conversion import ConversionError
from convllava_hf.conversion.config_conversion import convert_configs
from convllava_hf.embedding_padding import padded_vocab_size
from tiny_models import FIXTURE_DIR

LLM_CONFIG = json.loads((FIXTURE_DIR / "llm" / "config.json").read_text())
VISION_CONFIG = json.loads((FIXTURE_DIR / "vision" / "config.json").read_text())
PREPROCESSOR = json.loads((FIXTURE_DIR / "vision" / "preprocessor_config.json").read_text())


def convert(llm_changes=None, vision_changes=None, preprocessor_changes=None, dtype=torch.float32):
    return convert_configs(
        {**LLM_CONFIG, **(llm_changes or {})},
        {**VISION_CONFIG, **(vision_changes or {})},
        {**PREPROCESSOR, **(preprocessor_changes or {})},
        dtype,
    )


def test_fixture_config_becomes_the_tiny_conv_llava_config():
    conversion = convert()
    config = conversion.config
    assert config.model_type == "conv_llava"
    assert (config.image_token_index, config.image_resolution, config.image_seq_length) == (800, 256, 16)
    assert config.vision_feature_layer == -1
    assert config.text_config.vocab_size == 832 and conversion.original_vocab_size == 800
    assert config.text_config.num_hidden_layers == 2 and config.text_config.rms_norm_eps == 1e-5
    assert config.text_config.rope_parameters["rope_theta"] == 10000.0
    assert config.text_config.use_cache is True  # the training config's use_cache=False is not carried over
    assert config.vision_config.depths == [1, 1, 2, 1, 1] and config.vision_config.image_size == 256
    assert conversion.image_processor_kwargs["resolution"] == 256
    assert conversion.image_processor_kwargs["image_mean"] == PREPROCESSOR["image_mean"]


@pytest.mark.parametrize(("original", "padded"), [(800, 832), (32000, 32064), (831, 832), (832, 896)])
def test_vocabulary_grows_by_image_token_and_pads_to_a_multiple_of_64(original, padded):
    assert padded_vocab_size(original + 1) == padded


def test_generic_extra_config_keys_are_tolerated():
    extra = {
        "initializer_range": 0.02, "attention_bias": False, "attention_dropout": 0.0, "_name_or_path": "x",
        "transformers_version": "4.39.3", "torch_dtype": "bfloat16", "max_length": 4096,
    }  # fmt: skip
    assert convert(extra).config.to_dict() == convert().config.to_dict()


def test_resolution_follows_the_vision_preprocessor_config():
    conversion = convert(
        preprocessor_changes={"size": {"shortest_edge": 768}, "crop_size": {"height": 768, "width": 768}}
    )
    assert conversion.config.image_resolution == 768 and conversion.config.image_seq_length == 144


@pytest.mark.parametrize(
    ("llm_changes", "named"),
    [
        ({"mm_projector_type": "linear"}, "mm_projector_type"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"mm_use_im_patch_token": True}, "mm_use_im_patch_token"),
        ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type"),
        ({"image_aspect_ratio": "square"}, "image_aspect_ratio"),
        ({"vision_add_five_stage": 6}, "vision_add_five_stage"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"model_type": "llama"}, "model_type"),
        ({"architectures": ["LlavaMistralForCausalLM"]}, "LlavaMistralForCausalLM"),
        ({"some_new_switch": 1}, "some_new_switch"),
        ({"mm_hidden_size": 128}, "mm_hidden_size"),
    ],
)
def test_settings_the_port_cannot_reproduce_are_refused_by_name(llm_changes, named):
    with pytest.raises(ConversionError, match=named):
        convert(llm_changes)


@pytest.mark.parametrize(
    ("vision_changes", "preprocessor_changes", "named"),
    [
        ({"num_stages": 4, "depths": [1, 1, 2, 1], "hidden_sizes": [16, 24, 32, 48]}, {}, "5 stages"),
        ({"model_type": "clip_vision_model"}, {}, "ConvNeXt"),
        ({"unknown_vision_key": 1}, {}, "unknown_vision_key"),
        ({}, {"size": {"shortest_edge": 300}}, "shortest_edge"),
        ({}, {"crop_size": {"height": 256, "width": 192}}, "square"),
        ({}, {"do_normalize": False}, "do_normalize"),
    ],
)
def test_vision_settings_the_port_cannot_reproduce_are_refused(vision_changes, preprocessor_changes, named):
    with pytest.raises(ConversionError, match=named):
        convert(vision_changes=vision_changes, preprocessor_changes=preprocessor_changes)


def test_select_layer_minus_two_deletes_the_last_block_of_the_last_stage_like_the_original():
    conversion = convert({"mm_vision_select_layer": -2}, {"depths": [1, 1, 2, 1, 3]})
    assert conversion.config.vision_config.depths == [1, 1, 2, 1, 2]
    assert conversion.config.vision_feature_layer == -1
    assert conversion.dropped_vision_prefix == "encoder.stages.4.layers.2."
    with pytest.raises(ConversionError, match="only one"):
        convert({"mm_vision_select_layer": -2})


def test_select_layers_the_original_ignores_convert_to_the_last_stage_with_a_note():
    conversion = convert({"mm_vision_select_layer": -3})
    assert conversion.config.vision_feature_layer == -1 and conversion.dropped_vision_prefix is None
    assert any("mm_vision_select_layer=-3" in note for note in conversion.notes)


def test_missing_select_layer_is_refused():
    llm_config = {key: value for key, value in LLM_CONFIG.items() if key != "mm_vision_select_layer"}
    with pytest.raises(ConversionError, match="mm_vision_select_layer"):
        convert_configs(llm_config, VISION_CONFIG, PREPROCESSOR, torch.float32)


def test_output_dtype_is_recorded_in_every_config():
    config = convert(dtype=torch.bfloat16).config
    assert config.dtype == config.text_config.dtype == config.vision_config.dtype == torch.bfloat16
