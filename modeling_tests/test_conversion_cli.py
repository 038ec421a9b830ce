"""The `convllava-convert` command line: verification pass, refusals, Hub upload."""

import json

import pytest

from convllava_hf.conversion import convert_convllava
from tiny_models import FIXTURE_DIR


def cli(output, *extra) -> int:
    return convert_convllava.main(
        ["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output", str(output), *extra]
    )


def test_verify_reloads_and_reports_visual_tokens_and_a_finite_logits_summary(tmp_path, capsys):
    assert cli(tmp_path / "out", "--verify") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Verification forward pass: "))
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["visual_tokens"] == 16
    assert summary["logits_shape"] == [summary["sequence_length"], 832]
    assert summary["logits_min"] < summary["logits_mean"] < summary["logits_max"]
    assert 0 <= summary["next_token_id"] < 800


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
    assert {"README.md", "config.json", "model.safetensors"} <= set(calls[1][2])


@pytest.mark.parametrize("flag", ["--safe-serialization", "--force"])
def test_accepted_flags_still_write_safetensors(tmp_path, flag):
    assert cli(tmp_path / "out", flag) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
