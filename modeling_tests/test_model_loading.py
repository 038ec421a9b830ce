"""The one loader behind chat, the web demo, evaluation and training: what it loads and how each tool quantizes."""

import PIL.Image
import pytest
import torch

from convllava_hf.cli.demo import DEMO_IMAGE, build_demo_model_and_processor
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor
from convllava_hf.model_loading import CheckpointLoadError, load_model_and_processor, quantization_config
from convllava_hf.modeling_conv_llava import ConvLlavaForConditionalGeneration
from convllava_hf.processing_conv_llava import ConvLlavaProcessor


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The demo model and processor, saved; a second processor folder at another resolution."""
    model, processor = build_demo_model_and_processor(seed=1)
    folder = tmp_path_factory.mktemp("demo")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    other = tmp_path_factory.mktemp("processor")
    ConvLlavaProcessor(ConvLlavaImageProcessor(resolution=512), processor.tokenizer).save_pretrained(other)
    return model, folder, other


def test_the_loaded_model_computes_the_saved_models_logits_in_eval_mode(saved):
    reference, folder, _ = saved
    model, processor = load_model_and_processor(folder, dtype=torch.float32)
    assert type(model) is ConvLlavaForConditionalGeneration and type(processor) is ConvLlavaProcessor
    assert not model.training and processor.image_processor.resolution == 768
    inputs = processor(images=PIL.Image.open(DEMO_IMAGE), text="<image>\nWhat is it?", return_tensors="pt")
    with torch.no_grad():
        expected = reference.eval()(**inputs).logits
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_processor_id_loads_the_processor_from_its_own_folder(saved):
    _, folder, other = saved
    _, processor = load_model_and_processor(folder, processor_id=other)
    assert processor.image_processor.resolution == 512


def test_a_missing_processor_folder_is_named_in_the_error(saved, tmp_path):
    _, folder, _ = saved
    missing = tmp_path / "no-processor"
    with pytest.raises(CheckpointLoadError, match=f"no local folder '{missing}' exists"):
        load_model_and_processor(folder, processor_id=missing)


def test_each_tools_quantization_settings():
    assert quantization_config(None) is None
    chat = quantization_config("4bit")  # chat and the web demo: bitsandbytes' defaults
    assert chat.load_in_4bit and chat.bnb_4bit_quant_type == "fp4" and chat.bnb_4bit_compute_dtype == torch.float32
    assert not chat.bnb_4bit_use_double_quant
    evaluation = quantization_config("4bit", torch.bfloat16)
    assert evaluation.bnb_4bit_quant_type == "fp4" and evaluation.bnb_4bit_compute_dtype == torch.bfloat16
    qlora = quantization_config("4bit", torch.float16, for_training=True)
    assert qlora.bnb_4bit_quant_type == "nf4" and qlora.bnb_4bit_use_double_quant
    assert qlora.bnb_4bit_compute_dtype == torch.float16
    eight = quantization_config("8bit", torch.bfloat16)
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_an_unknown_quantization_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"quantization must be one of \('4bit', '8bit'\) or None, got '3bit'"):
        quantization_config("3bit")
