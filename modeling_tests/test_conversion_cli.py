"""The `convllava-convert` command line: verification pass, refusals, Hub upload."""

import json
import os

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from convllava_hf.conversion import convert_convllava
from convllava_hf.conversion.verify import synthetic_image
from tiny_models import FIXTURE_DIR


def cli(output, *extra) -> int:
    return convert_convllava.main(
        ["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output", str(output), *extra]
    )


def test_verify_reports_the_logits_of_the_published_model_on_its_test_image(tmp_path, capsys):
    assert cli(tmp_path / "out", "--verify") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Verification forward pass: "))
    summary = json.loads(line.split(": ", 1)[1])
    # Recompute independently from the published folder: stock Auto classes, the chat template, the test image.
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=synthetic_image(256), text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    assert summary["visual_tokens"] == 16 == int((inputs["input_ids"] == 800).sum())
    assert summary["sequence_length"] == inputs["input_ids"].shape[1]
    assert summary["logits_shape"] == [inputs["input_ids"].shape[1], 832]
    for key, value in {"mean": logits.mean(), "std": logits.std(), "min": logits.min(), "max": logits.max()}.items():
        assert summary[f"logits_{key}"] == pytest.approx(float(value), abs=1e-5), key
    assert summary["next_token_id"] == int(logits[-1].argmax())
    assert summary["next_token"] == processor.tokenizer.convert_tokens_to_string(
        [processor.tokenizer.convert_ids_to_tokens(summary["next_token_id"])]
    )


def test_output_dot_writes_into_the_current_folder_and_leaves_nothing_else(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    monkeypatch.chdir(output)
    assert cli(".") == 0
    assert (output / "config.json").is_file() and list(output.glob("model*.safetensors"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert not [name for name in os.listdir(output) if name.startswith(".")]


def test_refused_input_exits_with_status_2_and_a_message(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file").write_text("x")
    assert cli(tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "--force" in error
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["file"]


def test_push_to_hub_uploads_the_finished_folder(tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(path.name for path in folder_path.iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(convert_convllava, "HfApi", RecordingApi)
    assert cli(tmp_path / "out", "--push-to-hub", "someone/convllava-tiny") == 0
    assert calls[0] == ("create_repo", "someone/convllava-tiny", {"repo_type": "model", "exist_ok": True})
    assert calls[1][:2] == ("upload_folder", "someone/convllava-tiny")
    # the default layout is the stock one: what a Hub user loads with plain transformers
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(
        calls[1][2]
    )
    assert not [name for name in calls[1][2] if name.endswith(".py")]


@pytest.mark.parametrize("flag", ["--safe-serialization", "--force"])
def test_accepted_flags_still_write_safetensors(tmp_path, flag):
    assert cli(tmp_path / "out", flag) == 0
    assert list((tmp_path / "out").glob("model*.safetensors"))
