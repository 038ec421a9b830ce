"""Behaviour of the ConvLLaVA model: token counts, mixed sizes, generation, training, serialisation, errors."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, ConvNextModel, LlamaForCausalLM

from convllava_hf import ConvLlavaConfig, ConvLlavaForConditionalGeneration
from tiny_models import TINY_IMAGE_TOKEN_ID, tiny_config, tiny_model

IMAGE_TOKENS = 16  # tiny tower, 256x256 pixels


def prompt_ids(prefix: list[int], suffix: list[int], num_image_tokens: int = IMAGE_TOKENS) -> torch.Tensor:
    return torch.tensor([prefix + [TINY_IMAGE_TOKEN_ID] * num_image_tokens + suffix])


def full_size_token_grid(height: int, width: int) -> tuple[int, ...]:
    """Shape of the last ConvNeXt feature map of the released tower, by shape inference on the meta device."""
    config = ConvLlavaConfig()
    with torch.device("meta"):
        tower = ConvNextModel(config.vision_config)
        return tuple(tower(torch.empty(1, 3, height, width)).last_hidden_state.shape)


def stock_image_features(model: ConvLlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """
    Image 0's features by hand from the model's weights: transformers' ConvNextModel output `vision_feature_layer`
    (stem, stage 1, ..., stage 5), flattened row-major, then Linear, exact GELU, Linear (the original's mlp2x_gelu).
    """
    state = model.state_dict()
    tower = ConvNextModel(model.config.vision_config).eval()
    prefix = "model.vision_tower."
    tower.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
    with torch.no_grad():
        feature_map = tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][0]
        features = feature_map.flatten(1).T
        hidden = torch.nn.functional.linear(
            features,
            state["model.multi_modal_projector.linear_1.weight"],
            state["model.multi_modal_projector.linear_1.bias"],
        )
        return torch.nn.functional.linear(
            torch.nn.functional.gelu(hidden),
            state["model.multi_modal_projector.linear_2.weight"],
            state["model.multi_modal_projector.linear_2.bias"],
        )


@pytest.mark.parametrize(("resolution", "tokens"), [(768, 144), (1024, 256), (1536, 576)])
def test_released_resolutions_give_144_256_576_visual_tokens(resolution, tokens):
    config = ConvLlavaConfig(image_resolution=resolution)
    assert config.image_seq_length == tokens
    batch, channels, rows, columns = full_size_token_grid(resolution, resolution)
    assert (batch, channels, rows * columns) == (1, 3072, tokens)


def test_non_square_image_gives_rows_times_columns_tokens():
    assert full_size_token_grid(1536, 768)[2:] == (24, 12)  # 288 tokens instead of 576


def test_default_config_is_the_released_7b_model():
    config = ConvLlavaConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.depths, vision.hidden_sizes) == ([3, 3, 27, 3, 6], [192, 384, 768, 1536, 3072])
    assert (text.model_type, text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (
        "llama",
        4096,
        32,
        11008,
    )
    assert (config.image_resolution, config.image_seq_length, config.vision_feature_size) == (1536, 576, 3072)
    assert config.image_token_id == config.image_token_index == 32000


def test_config_rejects_resolution_not_multiple_of_64_and_out_of_range_feature_layer():
    with pytest.raises(Exception, match="multiple of 64"):
        ConvLlavaConfig(image_resolution=1000)
    with pytest.raises(Exception, match="vision_feature_layer"):
        tiny_config(vision_feature_layer=6)


def test_vision_tower_is_transformers_convnext_with_its_weights_and_outputs():
    model = tiny_model()
    tower = model.model.vision_tower
    assert isinstance(tower, ConvNextModel)
    reference = ConvNextModel(tower.config).eval()
    assert reference.load_state_dict(tower.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels).last_hidden_state, reference(pixels).last_hidden_state, rtol=0, atol=0)


def test_image_features_are_last_stage_map_flattened_row_major_then_projected():
    model = tiny_model()
    pixels = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        feature_map = model.model.vision_tower(pixels).last_hidden_state  # (1, 64, 2, 4)
        features = model.get_image_features(pixel_values=pixels)
    expected = feature_map[0].permute(1, 2, 0).reshape(8, 64)
    torch.testing.assert_close(features.last_hidden_state[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(features.pooler_output[0], model.model.multi_modal_projector(expected), rtol=0, atol=0)


def test_earlier_vision_feature_layer_selects_that_stage_with_its_width():
    model = tiny_model(vision_feature_layer=-2)  # stage 4: width 48, stride 32
    assert model.model.multi_modal_projector.linear_1.in_features == 48
    pixels = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels).pooler_output
    assert features[0].shape == (8 * 4, 64)
    torch.testing.assert_close(features[0], stock_image_features(model, pixels), rtol=0, atol=0)


def test_mixed_size_images_give_the_same_features_as_each_image_alone():
    model = tiny_model()
    images = [torch.randn(3, 256, 128), torch.randn(3, 128, 256), torch.randn(3, 256, 128), torch.randn(3, 64, 64)]
    with torch.no_grad():
        alone = [model.get_image_features(pixel_values=image[None]).pooler_output[0] for image in images]
        from_list = model.get_image_features(pixel_values=images).pooler_output
        padded = torch.zeros(len(images), 3, 256, 256)
        for index, image in enumerate(images):
            padded[index, :, : image.shape[1], : image.shape[2]] = image
        sizes = torch.tensor([image.shape[1:] for image in images])
        from_padded_batch = model.get_image_features(pixel_values=padded, image_sizes=sizes).pooler_output
    assert [features.shape[0] for features in from_list] == [8, 8, 8, 1]
    for single, listed, cropped in zip(alone, from_list, from_padded_batch):
        assert (single - listed).abs().max() <= 1e-5
        assert (single - cropped).abs().max() <= 1e-5


def test_image_sizes_may_be_a_list_but_never_larger_than_the_canvas():
    model = tiny_model()
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        as_list = model.get_image_features(pixel_values=pixels, image_sizes=[[128, 256]]).pooler_output
        as_tensor = model.get_image_features(pixel_values=pixels, image_sizes=torch.tensor([[128, 256]])).pooler_output
    torch.testing.assert_close(as_list[0], as_tensor[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"within its canvas \(256, 256\)"):
        model.get_image_features(pixel_values=pixels, image_sizes=[[320, 256]])


def test_image_side_not_multiple_of_stride_is_rejected():
    with pytest.raises(ValueError, match="multiples of 64"):
        tiny_model().get_image_features(pixel_values=torch.randn(1, 3, 100, 128))


def test_image_token_count_different_from_feature_count_raises_naming_both():
    model = tiny_model()
    with pytest.raises(ValueError, match="15 image tokens .* 16 image features"):
        model(input_ids=prompt_ids([1, 5], [7], num_image_tokens=15), pixel_values=torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="32 image tokens .* 16 image features"):
        model(input_ids=prompt_ids([1, 5], [7], num_image_tokens=32), pixel_values=torch.randn(1, 3, 256, 256))


def test_greedy_generation_is_identical_with_and_without_cache():
    model = tiny_model()
    inputs = {"input_ids": prompt_ids([1, 11, 12], [13, 14]), "pixel_values": torch.randn(1, 3, 256, 256)}
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_generation_encodes_the_image_once_at_prefill():
    model = tiny_model()
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    model.generate(
        input_ids=prompt_ids([1, 11], [13]), pixel_values=torch.randn(1, 3, 256, 256), max_new_tokens=6, do_sample=False
    )
    assert len(calls) == 1


def test_left_padded_batch_generation_equals_each_sample_alone():
    model = tiny_model()
    samples = [
        (prompt_ids([1, 11, 12, 13, 14, 15], [16, 17]), torch.randn(1, 3, 256, 256)),
        (prompt_ids([1, 21], [22]), torch.randn(1, 3, 256, 256)),
    ]
    alone = [
        model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, do_sample=False)[
            0, ids.shape[1] :
        ].tolist()
        for ids, pixels in samples
    ]
    width = max(ids.shape[1] for ids, _ in samples)
    input_ids = torch.zeros(len(samples), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (ids, _) in enumerate(samples):
        input_ids[row, width - ids.shape[1] :] = ids[0]
        attention_mask[row, width - ids.shape[1] :] = 1
    batched = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=torch.cat([pixels for _, pixels in samples]),
        max_new_tokens=8,
        do_sample=False,
    )
    assert batched[:, width:].tolist() == alone


def stock_llama_with_the_same_weights(model: ConvLlavaForConditionalGeneration) -> LlamaForCausalLM:
    """transformers' own LlamaForCausalLM holding the ConvLLaVA language model and head, an independent reference."""
    llama = LlamaForCausalLM(model.config.text_config).eval()
    state = {f"model.{name}": tensor for name, tensor in model.model.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    llama.load_state_dict(state, strict=True)
    return llama


def test_text_only_generation_equals_stock_llama_with_the_same_weights():
    model = tiny_model()
    input_ids = torch.tensor([[1, 5, 6, 7, 300, 41]])
    reference = stock_llama_with_the_same_weights(model).generate(
        input_ids=input_ids, max_new_tokens=10, do_sample=False
    )
    out = model.generate(input_ids=input_ids, pixel_values=None, max_new_tokens=10, do_sample=False)
    assert out.tolist() == reference.tolist()
    assert len(set(reference[0, 6:].tolist())) > 1  # a continuation that a wrong model would not reproduce by chance


def test_image_hidden_states_are_the_convnext_stem_and_stage_outputs():
    model = tiny_model()
    reference = ConvNextModel(model.model.vision_tower.config).eval()
    reference.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    pixels = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states
        features = model.get_image_features(pixel_values=pixels, output_hidden_states=True)
        without = model.get_image_features(pixel_values=pixels)
    assert len(expected) == len(features.hidden_states) == 6  # stem, then stages 1-5
    for layer, (ours, theirs) in enumerate(zip(features.hidden_states, expected)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=f"hidden state {layer}")
    assert without.hidden_states is None


def test_image_hidden_states_of_mixed_sizes_are_each_image_alone_in_input_order():
    model = tiny_model()
    images = [torch.randn(3, 128, 256), torch.randn(3, 256, 128), torch.randn(3, 128, 256)]
    with torch.no_grad():
        mixed = model.get_image_features(pixel_values=images, output_hidden_states=True).hidden_states
        alone = [model.model.vision_tower(image[None], output_hidden_states=True).hidden_states for image in images]
    assert len(mixed) == 6
    for layer, per_image in enumerate(mixed):
        assert len(per_image) == len(images)
        for index, image_map in enumerate(per_image):
            assert (image_map - alone[index][layer][0]).abs().max() <= 1e-5, (layer, index)


def test_forward_with_output_hidden_states_returns_the_tower_hidden_states_too():
    model = tiny_model()
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = model(input_ids=prompt_ids([1, 5], [6]), pixel_values=pixels, output_hidden_states=True)
        tower = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    for ours, theirs in zip(out.image_outputs.hidden_states, tower, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize(
    # by hand, 256 px through strides stem 4, stage 1 4, stage 2 8, stage 3 16, stage 4 32, stage 5 64
    ("vision_feature_layer", "tokens"),
    [(-1, 4 * 4), (-2, 8 * 8), (-3, 16 * 16), (2, 32 * 32), (0, 64 * 64)],
)
def test_image_seq_length_follows_the_stride_of_vision_feature_layer(vision_feature_layer, tokens):
    model = tiny_model(vision_feature_layer=vision_feature_layer)
    assert model.config.image_seq_length == tokens
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels).pooler_output
    assert features[0].shape[0] == tokens
    torch.testing.assert_close(features[0], stock_image_features(model, pixels), rtol=0, atol=0)


def test_released_config_with_vision_feature_layer_minus_2_has_48x48_tokens():
    assert ConvLlavaConfig(vision_feature_layer=-2).image_seq_length == (1536 // 32) ** 2 == 2304


def test_labels_give_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    input_ids = prompt_ids([1, 11, 12], [13, 14, 15])
    labels = input_ids.clone()
    labels[:, :19] = -100  # prompt and image positions
    out = model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 256, 256), labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_gradient_checkpointing_recomputes_both_towers_and_keeps_gradients():
    def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        block_calls = []
        # pre-hooks inside the blocks: the backward recompute of a checkpointed block runs them again
        vision_block, text_block = (
            model.model.vision_tower.encoder.stages[4].layers[0],
            model.model.language_model.layers[0],
        )
        vision_block.dwconv.register_forward_pre_hook(lambda *a: block_calls.append("vision"))
        text_block.self_attn.register_forward_pre_hook(lambda *a: block_calls.append("text"))
        input_ids = prompt_ids([1, 11, 12], [13, 14, 15])
        out = model(
            input_ids=input_ids,
            pixel_values=torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)),
            labels=input_ids,
        )
        out.loss.backward()
        expected_calls = 2 if checkpointing else 1
        assert block_calls.count("vision") == block_calls.count("text") == expected_calls
        return out.loss.detach(), {name: p.grad for name, p in model.named_parameters()}

    loss_plain, grads_plain = loss_and_grads(checkpointing=False)
    loss_checkpointed, grads_checkpointed = loss_and_grads(checkpointing=True)
    torch.testing.assert_close(loss_checkpointed, loss_plain)
    unused = "model.vision_tower.layernorm."  # ConvNextModel's pooling layernorm, which ConvLLaVA never applies
    assert all(grad is not None for name, grad in grads_checkpointed.items() if not name.startswith(unused))
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_checkpointed[name], grad, msg=name)


def comparable(config: dict) -> dict:
    """A config dict without the fields that loading fills in (origin path, load dtype)."""
    return {
        key: comparable(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in ("_name_or_path", "dtype")
    }


def test_save_and_reload_through_auto_class_is_bit_exact_safetensors(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(reloaded) is ConvLlavaForConditionalGeneration
    assert comparable(reloaded.config.to_dict()) == comparable(model.config.to_dict())
    original_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, reloaded_state[name]), name


def test_sdpa_is_the_default_and_attn_implementation_passes_through():
    assert tiny_model().model.language_model.config._attn_implementation == "sdpa"
    eager = AutoModelForImageTextToText.from_config(tiny_config(), attn_implementation="eager")
    assert eager.model.language_model.config._attn_implementation == "eager"
