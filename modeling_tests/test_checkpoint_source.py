"""A --model that is no local folder, or an original (unconverted) ConvLLaVA folder, gets a message saying so."""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from convllava_hf.cli.chat import main as chat
from convllava_hf.cli.web_demo import load_model_and_processor as demo_load
from convllava_hf.conversion.convert_convllava import main as convllava_convert
from convllava_hf.evaluation.loading import load_for_evaluation
from test_training_stages import build_dataset, train
from tiny_models import FIXTURE_DIR


def test_chat_with_a_missing_folder_says_no_such_folder_exists_and_that_a_hub_id_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        chat(["--model", "/missing/folder", "--max-new-tokens", "2"])
    message = exit_info.value.code
    assert message.startswith("convllava-chat: could not load --model '/missing/folder': no local folder ")
    assert "'/missing/folder' exists, so it was tried as a Hub model id, which failed: " in message


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """The original-tiny checkpoint as the original training script saves it: the vision tower in vision_tower/."""
    folder = tmp_path_factory.mktemp("original") / "ConvLLaVA-tiny"
    shutil.copytree(FIXTURE_DIR / "llm", folder)
    shutil.copytree(FIXTURE_DIR / "vision", folder / "vision_tower")
    return folder


def expected_command(original: Path) -> str:
    return f"convllava-convert --llm {original} --output {original.parent / 'ConvLLaVA-tiny-hf'}"


def test_the_command_named_for_an_original_folder_converts_it(original):
    assert convllava_convert(shlex.split(expected_command(original))[1:]) == 0
    converted = original.parent / "ConvLLaVA-tiny-hf"
    assert json.loads((converted / "config.json").read_text())["model_type"] == "fast_vlm"  # the default layout


def test_an_original_folder_without_its_vision_tower_gets_the_configs_vision_source():
    with pytest.raises(SystemExit, match=r"--output \S+-hf --vision ConvLLaVA/ConvLLaVA-ConvNeXt-tiny$"):
        chat(["--model", str(FIXTURE_DIR / "llm")])


@pytest.mark.parametrize("tool", ["chat", "demo", "train", "eval"])
def test_an_original_folder_is_answered_with_the_convert_command(original, tool, tmp_path):
    if tool == "chat":
        with pytest.raises(SystemExit) as error:
            chat(["--model", str(original)])
        message = str(error.value.code)
    elif tool == "demo":
        with pytest.raises(SystemExit) as error:
            demo_load(str(original))
        message = str(error.value.code)
    else:
        with pytest.raises(ValueError) as error:
            if tool == "train":
                train(3, original, build_dataset(tmp_path / "data"), tmp_path / "out")
            else:
                load_for_evaluation(original)
        message = str(error.value)
    assert "an original ConvLLaVA checkpoint (LLaVA layout), not a converted one" in message
    assert message.endswith(f"pass the output: {expected_command(original)}")
