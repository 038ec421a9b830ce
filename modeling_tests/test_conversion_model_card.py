"""The model card written next to converted weights: Hub metadata, vocabulary note, published results, license."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from sentencepiece import sentencepiece_model_pb2

from convllava_hf import ConvLlavaConfig
from convllava_hf.conversion import convert_checkpoint
from convllava_hf.conversion.model_card import render_model_card
from tiny_models import FIXTURE_DIR

LLM_SHARDS = sorted((FIXTURE_DIR / "llm").glob("pytorch_model-*.bin"))


def card(
    resolution: int, sources=("ConvLLaVA/ConvLLaVA-sft-1536", "ConvLLaVA/ConvLLaVA-ConvNeXt-1536"), notes=()
) -> str:
    config = ConvLlavaConfig(
        image_resolution=resolution, text_config={"model_type": "llama", "vocab_size": 32064, "dtype": torch.bfloat16}
    )
    return render_model_card(config, list(sources), [s for s in sources if "/" in s], 32000, list(notes))


def metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_card_has_hub_metadata_for_image_text_to_text():
    meta = metadata(card(1536))
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["license"] == "llama2"
    assert meta["base_model"] == ["ConvLLaVA/ConvLLaVA-sft-1536", "ConvLLaVA/ConvLLaVA-ConvNeXt-1536"]


def test_card_states_the_llama_2_license_and_the_weights_dtype():
    text = card(1536)
    assert "Llama 2 Community License" in text and "torch.bfloat16" in text


def llm_with_vocabulary(folder: Path, vocabulary: int) -> Path:
    """The fixture's LLM folder with `vocabulary` tokens: extra sentencepiece pieces and embedding / lm_head rows."""
    folder.mkdir(parents=True)
    tokenizer = sentencepiece_model_pb2.ModelProto()
    tokenizer.ParseFromString((FIXTURE_DIR / "llm" / "tokenizer.model").read_bytes())
    lowest = min(piece.score for piece in tokenizer.pieces)
    for index in range(len(tokenizer.pieces), vocabulary):
        tokenizer.pieces.add(piece=f"<extra_{index}>", score=lowest - 1)
    (folder / "tokenizer.model").write_bytes(tokenizer.SerializeToString())
    for name in ("generation_config.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE_DIR / "llm" / name, folder / name)
    config = json.loads((FIXTURE_DIR / "llm" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": vocabulary}))
    state = {name: tensor for shard in LLM_SHARDS for name, tensor in torch.load(shard, weights_only=True).items()}
    generator = torch.Generator().manual_seed(0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn(vocabulary - state[name].shape[0], state[name].shape[1], generator=generator)
        state[name] = torch.cat([state[name], extra])
    save_file(state, folder / "model.safetensors")
    return folder


def test_converted_cards_vocabulary_note_is_the_padding_the_converter_applied(tmp_path):
    # Vicuna's 32000 tokens + <image> = 32001, padded by hand to the next multiple of 64: 501 * 64 = 32064 rows,
    # 63 of them padding (a multiple of 32 would give 32032, forgetting <image> 32000: both differ from the fixture's
    # 800 -> 801 -> 832, which any of the three gives)
    llm = llm_with_vocabulary(tmp_path / "llm", 32000)
    output = convert_checkpoint(str(llm), tmp_path / "converted", str(FIXTURE_DIR / "vision"))
    text = " ".join((output / "README.md").read_text().split())  # the words, whatever the line breaks
    assert "`<image>` was added to the tokenizer as id 32000." in text
    assert "grown from 32000 to 32064 rows" in text
    assert "(`<image>` and 63 padding rows) is the **mean of the original rows**" in text
    # and that is what the folder holds: config, tokenizer and both matrices, new rows the original rows' mean
    assert json.loads((output / "config.json").read_text())["text_config"]["vocab_size"] == 32064
    added = json.loads((output / "tokenizer.json").read_text())["added_tokens"]
    assert [token["id"] for token in added if token["content"] == "<image>"] == [32000]
    weights = {name: tensor for file in output.glob("*.safetensors") for name, tensor in load_file(file).items()}
    original = load_file(llm / "model.safetensors")
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = original[name.replace("language_model.", "")]
        assert torch.equal(weights[name], torch.cat([rows, rows.mean(0).expand(64, -1)]))


@pytest.mark.parametrize(
    ("resolution", "mme", "tokens"), [(768, "1541", 144), (1024, "1553", 256), (1536, "1575", 576)]
)
def test_card_quotes_the_published_results_of_its_resolution_only(resolution, mme, tokens):
    text = card(resolution)
    assert f"ConvLLaVA-sft-{resolution} (7B, {tokens} visual tokens)" in text
    others = {"1541", "1553", "1575"} - {mme}
    assert f"| {mme} |" in text and not any(f"| {other} |" in text for other in others)


def test_card_never_invents_results_for_unpublished_resolutions_or_pretrain_checkpoints():
    assert "No published results for 1280x1280" in card(1280)
    assert "| 1575 |" not in card(1280)
    assert "pretrain (stage 2) checkpoint, for which no results were published" in card(
        1536, ("ConvLLaVA/ConvLLaVA-pretrain-1536", "v")
    )


def test_conversion_notes_are_listed():
    assert "- mm_vision_select_layer=-3 is ignored" in card(1536, notes=["mm_vision_select_layer=-3 is ignored"])
