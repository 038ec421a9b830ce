"""convllava-train never writes over its inputs or unrelated files, and resumes from the newest complete checkpoint."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_training_stages import build_dataset, losses, save_base_model, train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("output")
    return {"data": build_dataset(root / "data"), "base": save_base_model(root / "base")}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("inside", [False, True], ids=["same-folder", "inside-the-model"])
def test_output_in_the_model_folder_is_refused_and_the_weights_are_untouched(workspace, tmp_path, inside):
    model = tmp_path / "model"
    shutil.copytree(workspace["base"], model)
    before = folder_bytes(model)
    output = model / "run" if inside else model
    with pytest.raises(ValueError, match="would write into --model"):
        train(3, model, workspace["data"], output, "--max_steps=1")
    assert folder_bytes(model) == before


def test_non_empty_output_that_is_no_training_run_needs_overwrite_output_dir(workspace, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        train(3, workspace["base"], workspace["data"], output, "--max_steps=1")
    assert [path.name for path in output.iterdir()] == ["notes.txt"]
    train(3, workspace["base"], workspace["data"], output, "--max_steps=1", "--overwrite_output_dir")
    assert (output / "model.safetensors").is_file() and (output / "notes.txt").read_text() == "precious"
    train(3, workspace["base"], workspace["data"], output, "--max_steps=2")  # a training run's output: allowed
    assert len(losses(output)) == 2


def test_resume_latest_skips_a_checkpoint_cut_short_while_saving_and_says_which_it_used(workspace, tmp_path, caplog):
    args = ("--max_steps=6", "--save_strategy=steps", "--save_steps=3", "--learning_rate=1e-3")
    train(3, workspace["base"], workspace["data"], tmp_path / "straight", *args)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed / "checkpoint-3")
    # A run killed while writing checkpoint-6: its weights half written, the trainer state (written last) not yet.
    killed = resumed / "checkpoint-6"
    killed.mkdir()
    shutil.copy(tmp_path / "straight" / "checkpoint-6" / "config.json", killed)
    weights = (tmp_path / "straight" / "checkpoint-6" / "model.safetensors").read_bytes()
    (killed / "model.safetensors").write_bytes(weights[: len(weights) // 2])

    with caplog.at_level(logging.WARNING):
        train(3, workspace["base"], workspace["data"], resumed, *args, "--resume_from_checkpoint=latest")
    message = next(record.getMessage() for record in caplog.records if "Resuming from" in record.getMessage())
    assert str(resumed / "checkpoint-3") in message and "checkpoint-6" in message
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == pytest.approx(losses(tmp_path / "straight"), rel=1e-5)
    straight, again = load_file(tmp_path / "straight" / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=1e-5, atol=1e-6)


def test_resume_latest_without_a_complete_checkpoint_names_the_incomplete_ones(workspace, tmp_path):
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(ValueError, match="no complete checkpoint.*checkpoint-4"):
        train(3, workspace["base"], workspace["data"], tmp_path / "out", "--resume_from_checkpoint=latest")


def test_model_inside_the_output_is_refused_and_never_rotated_away(workspace, tmp_path):
    output = tmp_path / "out"
    train(3, workspace["base"], workspace["data"], output, "--max_steps=2", "--save_strategy=steps", "--save_steps=2")
    before = folder_bytes(output)
    source = output / "checkpoint-2"
    with pytest.raises(ValueError, match="--model .*checkpoint-2 lies inside --output"):
        train(3, source, workspace["data"], output, "--max_steps=2", "--save_strategy=steps", "--save_steps=1",
              "--save_total_limit=1")  # fmt: skip
    assert folder_bytes(output) == before


def resume_message(caplog) -> str:
    return next(record.getMessage() for record in caplog.records if "Resuming from" in record.getMessage())


def test_resume_latest_takes_only_checkpoints_of_the_run_last_started_there(workspace, tmp_path, caplog):
    output, saving = tmp_path / "out", ("--save_strategy=steps", "--save_steps=2")
    train(3, workspace["base"], workspace["data"], output, "--max_steps=4", *saving)  # run A: checkpoint-2, -4
    first_run = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"]
    train(3, workspace["base"], workspace["data"], output, "--max_steps=2", *saving)  # run B, fresh: checkpoint-2
    resume = "--resume_from_checkpoint=latest"
    with caplog.at_level(logging.WARNING):
        train(3, workspace["base"], workspace["data"], output, "--max_steps=4", *saving, resume)
    assert str(output / "checkpoint-2") in resume_message(caplog) and "ignoring checkpoint-4" in resume_message(caplog)
    state = json.loads((output / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    resumed_run = json.loads((output / "convllava_run.json").read_text())["run_id"]
    assert state["stateful_callbacks"]["RunIdentity"]["args"]["run_id"] == resumed_run  # run B went on
    assert first_run["RunIdentity"]["args"]["run_id"] != resumed_run


def test_resume_latest_after_a_fresh_run_without_checkpoints_names_the_earlier_runs(workspace, tmp_path):
    output = tmp_path / "out"
    train(3, workspace["base"], workspace["data"], output, "--max_steps=2", "--save_strategy=steps", "--save_steps=2")
    train(3, workspace["base"], workspace["data"], output, "--max_steps=1")  # saves no checkpoint
    with pytest.raises(ValueError, match=r"last run into .* saved no checkpoint.*checkpoint-2 \(run [0-9a-f]{12}\)"):
        train(3, workspace["base"], workspace["data"], output, "--max_steps=3", "--resume_from_checkpoint=latest")
