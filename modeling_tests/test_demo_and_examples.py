"""The README's demo command and the example scripts run end to end without weights."""

import runpy
import sys
from pathlib import Path

import pytest

from convllava_hf.cli.chat import main as chat

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


def test_chat_falls_back_to_the_labelled_demo_when_the_model_cannot_be_loaded(tmp_path, capsys):
    chat(["--model", str(tmp_path / "missing"), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert "Could not load" in err and "DEMO MODE" in err


@pytest.mark.parametrize("script", ["chat_multiturn.py", "pipeline_inference.py"])
def test_example_runs_on_the_demo_model(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script] + (["--max-new-tokens", "3"] if script == "chat_multiturn.py" else []))
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert capsys.readouterr().out.strip()
