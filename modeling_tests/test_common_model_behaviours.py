"""Conventions every transformers model keeps (the spirit of transformers' ModelTesterMixin), checked on ConvLLaVA."""

import torch
from transformers import AutoModel, AutoModelForImageTextToText, LlamaModel

from convllava_hf import ConvLlavaModel
from tiny_models import TINY_IMAGE_TOKEN_ID, TINY_TEXT, tiny_config, tiny_model

INPUT_IDS = torch.tensor([[1, 11, 12] + [TINY_IMAGE_TOKEN_ID] * 16 + [13, 14]])
PIXELS = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def stock_llama_run(model, **kwargs):
    """
    Transformers' own LlamaModel with the model's language-model weights, run on INPUT_IDS' embeddings with the 16
    `<image>` rows replaced by the model's image features for PIXELS (the LLaVA recipe, written out here).
    """
    state = model.state_dict()  # `model.language_model.*` in the full model, `language_model.*` in the base model
    weights = {name.split("language_model.")[1]: value for name, value in state.items() if "language_model." in name}
    llama = LlamaModel(model.config.text_config).eval()
    llama.load_state_dict(weights)
    with torch.no_grad():
        embeds = weights["embed_tokens.weight"][INPUT_IDS].clone()
        embeds[INPUT_IDS == TINY_IMAGE_TOKEN_ID] = model.get_image_features(pixel_values=PIXELS).pooler_output[0]
        return llama(inputs_embeds=embeds, **kwargs)


def test_fresh_model_is_initialised_like_its_parts():
    model = AutoModelForImageTextToText.from_config(tiny_config())
    layer_scales = [p for name, p in model.named_parameters() if name.endswith("layer_scale_parameter")]
    assert layer_scales and all(torch.all(p == 1e-6) for p in layer_scales)  # ConvNeXt's own init
    projector = model.model.multi_modal_projector.linear_1
    assert abs(projector.weight.std().item() - 0.02) < 0.005 and torch.all(projector.bias == 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_return_dict_false_gives_a_tuple_with_loss_then_logits():
    model = tiny_model()
    with torch.no_grad():
        as_tuple = model(input_ids=INPUT_IDS, pixel_values=PIXELS, labels=INPUT_IDS, return_dict=False)
        as_output = model(input_ids=INPUT_IDS, pixel_values=PIXELS, labels=INPUT_IDS)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.loss)
    torch.testing.assert_close(as_tuple[1], as_output.logits)


def test_hidden_states_and_attentions_have_one_entry_per_layer():
    model = AutoModelForImageTextToText.from_config(tiny_config(), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS, pixel_values=PIXELS, output_hidden_states=True, output_attentions=True)
    layers = TINY_TEXT["num_hidden_layers"]
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    reference = stock_llama_run(model, output_hidden_states=True, output_attentions=True)
    for ours, theirs in zip(out.hidden_states, reference.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(out.attentions, reference.attentions, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=PIXELS).pooler_output
    torch.testing.assert_close(out.image_outputs.pooler_output[0], image_features[0], rtol=0, atol=0)


def test_eager_and_sdpa_attention_agree():
    sdpa = tiny_model()
    eager = AutoModelForImageTextToText.from_config(sdpa.config, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            eager(input_ids=INPUT_IDS, pixel_values=PIXELS).logits,
            sdpa(input_ids=INPUT_IDS, pixel_values=PIXELS).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_inputs_embeds_and_precomputed_image_features_match_input_ids_path():
    model = tiny_model()
    with torch.no_grad():
        reference = model(input_ids=INPUT_IDS, pixel_values=PIXELS).logits
        embeds = model.get_input_embeddings()(INPUT_IDS)
        from_embeds = model(inputs_embeds=embeds, pixel_values=PIXELS).logits
        image = model.get_image_features(pixel_values=PIXELS)
        from_features = model(input_ids=INPUT_IDS, mm_encoder_outputs={"image": image}).logits
    torch.testing.assert_close(from_embeds, reference, rtol=0, atol=0)
    torch.testing.assert_close(from_features, reference, rtol=0, atol=0)


def test_resize_token_embeddings_grows_input_and_output_embeddings():
    model = tiny_model()
    with torch.no_grad():
        before = model(input_ids=INPUT_IDS, pixel_values=PIXELS).logits
    embeddings, lm_head = model.get_input_embeddings().weight.clone(), model.lm_head.weight.clone()
    model.resize_token_embeddings(900)
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == 900
    assert model.config.text_config.vocab_size == 900
    # the 832 existing rows stay as they were, so the existing tokens' logits do too; 68 new logits follow them
    assert torch.equal(model.get_input_embeddings().weight[:832], embeddings)
    assert torch.equal(model.lm_head.weight[:832], lm_head)
    with torch.no_grad():
        after = model(input_ids=INPUT_IDS, pixel_values=PIXELS).logits
    assert after.shape[-1] == 900
    torch.testing.assert_close(after[..., :832], before, rtol=0, atol=0)


def test_base_model_returns_hidden_states_and_is_what_auto_model_builds():
    model = AutoModel.from_config(tiny_config()).eval()
    assert isinstance(model, ConvLlavaModel)
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS, pixel_values=PIXELS)
    torch.testing.assert_close(out.last_hidden_state, stock_llama_run(model).last_hidden_state, rtol=0, atol=0)


def test_bfloat16_model_runs_and_stays_close_to_float32():
    model = tiny_model()
    with torch.no_grad():
        reference = model(input_ids=INPUT_IDS, pixel_values=PIXELS).logits
        low = model.to(torch.bfloat16)(input_ids=INPUT_IDS, pixel_values=PIXELS).logits
    assert low.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits (unit roundoff 2**-8 = 0.4%); the tiny model's dozen roundings in a row
    # measured at most 1.3% of the largest logit over five seeds. 4% (about ten unit roundoffs) leaves headroom;
    # a part running in the wrong dtype or a mis-cast mask moves logits by tens of percent.
    torch.testing.assert_close(low.float(), reference, rtol=0, atol=0.04 * reference.abs().max().item())
