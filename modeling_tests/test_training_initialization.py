"""Stage 1 from scratch: a language model + a five-stage ConvNeXt folder + a new projector."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, ConvNextConfig, ConvNextModel, LlamaConfig, LlamaForCausalLM

from convllava_hf import ConvLlavaForConditionalGeneration
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from convllava_hf.training import parse_args
from convllava_hf.training.initialization import assemble_conv_llava
from test_training_stages import build_dataset, losses, train
from tiny_models import FIXTURE_DIR, TINY_TEXT, TINY_VISION

FIXTURE_VOCAB = 800  # the fixture tokenizer; <image> becomes id 800 and the embeddings grow to 832


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with the fixture's sentencepiece tokenizer, and a tiny five-stage ConvNeXt tower folder."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    text = {key: value for key, value in TINY_TEXT.items() if key != "model_type"}
    LlamaForCausalLM(LlamaConfig(**{**text, "vocab_size": FIXTURE_VOCAB})).save_pretrained(root / "llm")
    AutoTokenizer.from_pretrained(FIXTURE_DIR / "llm").save_pretrained(root / "llm")
    vision = {key: value for key, value in TINY_VISION.items() if key != "model_type"}
    ConvNextModel(ConvNextConfig(**vision)).save_pretrained(root / "vision")
    shutil.copy(FIXTURE_DIR / "vision" / "preprocessor_config.json", root / "vision")  # crop_size 256
    return {"llm": root / "llm", "vision": root / "vision", "data": build_dataset(root / "data"), "root": root}


def test_assembled_model_keeps_both_pretrained_parts_and_adds_the_image_token(parts):
    model, processor = assemble_conv_llava(parts["llm"], parts["vision"])
    llm = LlamaForCausalLM.from_pretrained(parts["llm"])
    tower = ConvNextModel.from_pretrained(parts["vision"])
    assert processor.image_token_id == model.config.image_token_id == FIXTURE_VOCAB
    assert model.config.image_resolution == processor.image_processor.resolution == 256
    assert model.get_input_embeddings().weight.shape[0] == model.config.text_config.vocab_size == 832
    torch.testing.assert_close(model.get_input_embeddings().weight[:FIXTURE_VOCAB], llm.get_input_embeddings().weight)
    for name, tensor in llm.model.state_dict().items():
        if "embed_tokens" not in name:
            torch.testing.assert_close(model.model.language_model.state_dict()[name], tensor)
    for name, tensor in tower.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor)
    for linear in (model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2):
        # nn.Linear's default initialisation: uniform in +-1/sqrt(fan_in), so std = bound/sqrt(3)
        bound = linear.in_features**-0.5
        assert linear.weight.abs().max() <= bound and linear.bias.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


def test_new_embedding_rows_of_a_fresh_stage1_model_are_the_mean_of_the_original_rows(parts):
    model, _ = assemble_conv_llava(parts["llm"], parts["vision"])
    llm = LlamaForCausalLM.from_pretrained(parts["llm"])
    for new, old in (
        (model.get_input_embeddings().weight, llm.get_input_embeddings().weight),
        (model.lm_head.weight, llm.lm_head.weight),
    ):
        rows = old.detach().double()
        mean = [sum(rows[i, j].item() for i in range(FIXTURE_VOCAB)) / FIXTURE_VOCAB for j in range(rows.shape[1])]
        expected = torch.tensor(mean, dtype=torch.float64).expand(832 - FIXTURE_VOCAB, -1)
        torch.testing.assert_close(new.detach()[FIXTURE_VOCAB:].double(), expected, rtol=0, atol=1e-7)
        assert torch.equal(new.detach()[FIXTURE_VOCAB:], new.detach()[FIXTURE_VOCAB].expand(832 - FIXTURE_VOCAB, -1))
        assert torch.equal(new.detach()[:FIXTURE_VOCAB], old.detach())


def test_stage1_from_a_language_model_and_a_vision_tower_writes_a_normal_checkpoint(parts):
    output = parts["root"] / "stage1"
    train(1, parts["llm"], parts["data"], output, f"--vision_tower={parts['vision']}", "--max_steps=3")
    assert len(losses(output)) == 3
    model = ConvLlavaForConditionalGeneration.from_pretrained(output)
    processor = ConvLlavaProcessor.from_pretrained(output)
    assert processor.image_token_id == model.config.image_token_id == FIXTURE_VOCAB
    weights, tower = load_file(output / "model.safetensors"), load_file(parts["vision"] / "model.safetensors")
    for name, tensor in tower.items():  # stages 1-4 and the stem were frozen
        if not name.startswith("encoder.stages.4."):
            assert torch.equal(weights[f"model.vision_tower.{name}"], tensor), name
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "conv_llava" and config["text_config"]["vocab_size"] == 832


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stage=3", "--vision_tower=x"], "only stage 1"),
        (["--stage=1", "--vision_tower=x", "--processor=y"], "drop --processor"),
    ],
)
def test_vision_tower_is_only_for_a_fresh_stage1(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model=m", "--data=d.json", "--output=o", "--use_cpu", *extra])
