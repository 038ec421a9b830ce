"""
A processor's `to_dict()` is the same before and after `save_pretrained` + `from_pretrained`: the assertions of
transformers' `ProcessorTesterMixin.test_processor_from_and_save_pretrained` and its `..._as_nested_dict` variant
(the mixin lives in transformers' tests/, which the wheel does not ship), with components loaded from a saved folder
as the mixin's `get_processor` loads them. The `auto_map` of the saved files must not leak into the objects.
"""

import json

import pytest
from transformers import AutoImageProcessor, AutoTokenizer

from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.image_processing_conv_llava import ConvLlavaImageProcessor
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from tiny_models import FIXTURE_DIR


@pytest.fixture(scope="module")
def tmpdirname(tmp_path_factory):
    """The mixin's setUp: a processor saved to a folder that the components are then loaded from."""
    folder = tmp_path_factory.mktemp("processor")
    processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision").save_pretrained(folder)
    return folder


def get_processor(tmpdirname) -> ConvLlavaProcessor:
    image_processor = ConvLlavaImageProcessor.from_pretrained(tmpdirname)
    return ConvLlavaProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(tmpdirname))


def test_processor_from_and_save_pretrained(tmpdirname, tmp_path):
    processor_first = get_processor(tmpdirname)
    saved_files = processor_first.save_pretrained(tmp_path)
    json.loads(open(saved_files[0]).read())  # check_json_file_has_correct_format
    processor_second = ConvLlavaProcessor.from_pretrained(tmp_path)
    assert processor_second.to_dict() == processor_first.to_dict()
    for attribute in processor_first.get_attributes():
        if "tokenizer" not in attribute:
            first, second = getattr(processor_first, attribute), getattr(processor_second, attribute)
            for name in ("_processor_class", "processor_class"):
                assert not hasattr(first, name) and not hasattr(second, name)
            assert repr(first) == repr(second)


def test_processor_from_and_save_pretrained_as_nested_dict(tmpdirname, tmp_path):
    processor_first = get_processor(tmpdirname)
    processor_first.save_pretrained(tmp_path)
    processor_second = ConvLlavaProcessor.from_pretrained(tmp_path)
    assert processor_second.to_dict() == processor_first.to_dict()
    assert repr(AutoImageProcessor.from_pretrained(tmp_path)) == repr(processor_first.image_processor)


def test_a_new_processor_has_the_dict_of_its_reloaded_copy_and_the_files_keep_auto_map(tmp_path):
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")
    before = processor.to_dict()
    processor.save_pretrained(tmp_path)
    assert processor.to_dict() == before == ConvLlavaProcessor.from_pretrained(tmp_path).to_dict()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_conv_llava.ConvLlavaProcessor"
    image_processor_class = saved["image_processor"]["auto_map"]["AutoImageProcessor"]
    assert image_processor_class == "image_processing_conv_llava.ConvLlavaImageProcessor"


def test_image_processor_from_and_save_pretrained(tmp_path):
    first = ConvLlavaImageProcessor(resolution=256)
    first.save_pretrained(tmp_path)
    assert ConvLlavaImageProcessor.from_pretrained(tmp_path).to_dict() == first.to_dict()
    assert "auto_map" in json.loads((tmp_path / "preprocessor_config.json").read_text())
