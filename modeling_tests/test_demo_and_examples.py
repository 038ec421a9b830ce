"""The README's demo command and the example scripts run end to end without weights."""

import runpy
import sys
import tempfile
from pathlib import Path

import PIL.Image
import pytest
import torch

from convllava_hf.cli import chat as chat_module
from convllava_hf.cli.chat import main as chat
from convllava_hf.cli.demo import DEMO_IMAGE, build_demo_model_and_processor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_chat_demo_streams_an_answer_and_reports_tokens_and_timings_without_weights(capsys):
    chat(["--prompt", "What is in this image?", "--max-new-tokens", "5"])
    out, err = capsys.readouterr()
    assert "DEMO MODE" in err and "RANDOM weights" in err
    assert "640x427 -> 768x768 pixels -> 144 visual tokens (12x12)" in err
    assert "time to first token" in err and "(5 tokens)" in err
    assert out.startswith("ASSISTANT:")


def test_chat_demo_preserve_mode_spends_fewer_tokens_on_a_wide_picture(capsys):
    chat(["--image-aspect-ratio", "preserve", "--max-new-tokens", "2"])
    assert "640x427 -> 768x512 pixels -> 96 visual tokens (8x12)" in capsys.readouterr().err


def test_chat_demo_answer_is_the_models_own_greedy_continuation(capsys):
    """The streamed answer equals `generate` + `decode` on the same demo model, prompt and picture."""
    chat(["--prompt", "Describe it.", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    model, processor = build_demo_model_and_processor()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=PIL.Image.open(DEMO_IMAGE), text=prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected and out == f"ASSISTANT: {expected}\n"


def test_demo_vocabulary_is_the_tokenizers_so_every_id_decodes():
    model, processor = build_demo_model_and_processor()
    vocabulary = model.config.text_config.vocab_size
    assert vocabulary == len(processor.tokenizer)
    tokens = processor.tokenizer.convert_ids_to_tokens(list(range(vocabulary)))
    assert all(tokens) and len(set(tokens)) == vocabulary


@pytest.mark.parametrize(
    "model", ["missing-folder", "incomplete-folder", "nobody-has/this-convllava-model"], ids=lambda name: name
)
def test_chat_exits_non_zero_with_the_load_error_and_never_falls_back_to_the_demo(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub id that cannot be reached, without a network
    if model == "incomplete-folder":
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.json").write_text('{"model_type": "conv_llava"}')
    argument = model if "/" in model else str(tmp_path / model)
    monkeypatch.setattr(chat_module, "build_demo_model_and_processor", lambda: pytest.fail("fell back to the demo"))
    with pytest.raises(SystemExit) as exit_info:
        chat(["--model", argument, "--max-new-tokens", "2"])
    assert isinstance(exit_info.value.code, str)  # printed to stderr, exit status 1
    assert exit_info.value.code.startswith(f"convllava-chat: could not load --model {argument!r}: ")
    assert "DEMO MODE" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "does not exist"), ("directory", "is a directory"), ("corrupt", "truncated, corrupt or not an image")],
)
def test_chat_checks_the_image_before_loading_a_model(kind, message, tmp_path, monkeypatch):
    path = {"missing": tmp_path / "nope.png", "directory": tmp_path, "corrupt": tmp_path / "bad.png"}[kind]
    if kind == "corrupt":
        path.write_bytes(DEMO_IMAGE.read_bytes()[:200])
    monkeypatch.setattr(chat_module, "build_demo_model_and_processor", lambda: pytest.fail("model loaded first"))
    with pytest.raises(SystemExit) as exit_info:
        chat(["--image", str(path)])
    text = exit_info.value.code
    assert text.startswith("convllava-chat: --image: ") and message in text and "\n" not in text


def test_chat_load_in_4bit_runs_on_the_demo_model(monkeypatch, capsys):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    loaded = []
    original_load = chat_module.load
    monkeypatch.setattr(chat_module, "load", lambda *args: loaded.append(original_load(*args)) or loaded[-1])
    chat(["--load-in-4bit", "--max-new-tokens", "3"])
    model = loaded[0][0]
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())
    assert "(3 tokens)" in capsys.readouterr().err


def run_example(script: str, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    return capsys.readouterr().out


def test_pipeline_example_prints_what_generate_answers_and_leaves_no_temp_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TMPDIR, as tempfile reads it
    lines = run_example("pipeline_inference.py", monkeypatch, capsys).splitlines()
    assert list(tmp_path.iterdir()) == []
    model, processor = build_demo_model_and_processor()
    picture = PIL.Image.open(DEMO_IMAGE).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]
    prompts = [
        processor.apply_chat_template(messages, add_generation_prompt=True),
        "USER: <image>\nDescribe the sky. ASSISTANT:",
    ]
    for prompt, line in zip(prompts, lines[:2], strict=True):
        inputs = processor(images=picture, text=prompt, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        assert line == processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(lines) == 4


def test_multiturn_example_carries_images_and_answers_across_turns(monkeypatch, capsys):
    out = run_example("chat_multiturn.py", monkeypatch, capsys, "--max-new-tokens", "3")
    questions = [
        "USER (2 images so far): How do these two pictures differ?",
        "USER (3 images so far): And how does this third one compare?",
        "USER (3 images so far): Which of the three has the most colours?",
    ]
    assert [line for line in out.splitlines() if line.startswith("USER")] == questions
    answers = [line.removeprefix("ASSISTANT: ") for line in out.splitlines() if line.startswith("ASSISTANT: ")]
    last_prompt = out.split("Last prompt: ", 1)[1]
    assert last_prompt.count("<image>") == 3
    positions = [last_prompt.index(f"ASSISTANT: {answer}") for answer in answers]  # the history holds each answer
    assert positions == sorted(positions)
