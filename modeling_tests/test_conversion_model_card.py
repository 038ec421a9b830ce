"""The model card written next to converted weights: Hub metadata, vocabulary note, published results, license."""

import pytest
import torch
import yaml

from convllava_hf import ConvLlavaConfig
from convllava_hf.conversion.model_card import render_model_card


def card(
    resolution: int, sources=("ConvLLaVA/ConvLLaVA-sft-1536", "ConvLLaVA/ConvLLaVA-ConvNeXt-1536"), notes=()
) -> str:
    config = ConvLlavaConfig.for_resolution(
        resolution, text_config={"model_type": "llama", "vocab_size": 32064, "dtype": torch.bfloat16}
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


def test_card_explains_the_added_image_token_and_mean_initialised_rows():
    text = card(1536)
    assert "id 32000" in text and "from 32000 to 32064 rows" in text and "mean of the original rows" in text
    assert "Llama 2 Community License" in text and "torch.bfloat16" in text


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
