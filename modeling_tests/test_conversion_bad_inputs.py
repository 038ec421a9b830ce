"""Every broken converter input ends in a `ConversionError` that names the file and the problem, never a traceback."""

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from convllava_hf.conversion import ConversionError, convert_convllava
from test_conversion_checkpoints import convert, converted_tensors, original_llm_state, write_llm
from tiny_models import FIXTURE_DIR


def copy_llm(tmp_path: Path) -> Path:
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURE_DIR / "llm", llm)
    return llm


def edit_config(llm: Path, edit) -> Path:
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps(edit(config)))
    return llm / "config.json"


def refused(llm: Path, output: Path, *patterns: str) -> str:
    """Convert, expect a refusal whose message matches every pattern, and check that nothing was written."""
    with pytest.raises(ConversionError) as error:
        convert(llm, output)
    message = str(error.value)
    for pattern in patterns:
        assert pattern in message, message
    assert not output.exists()
    return message


def test_truncated_safetensors_file_is_named_as_truncated(tmp_path):
    llm = write_llm(tmp_path / "llm", original_llm_state(), "safetensors-single")
    weights = llm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(llm, tmp_path / "out", str(weights), "truncated or corrupt")


def test_safetensors_file_saved_for_another_framework_is_refused_naming_it(tmp_path):
    llm = write_llm(tmp_path / "llm", original_llm_state(), "safetensors-single")
    save_file(load_file(llm / "model.safetensors"), llm / "model.safetensors", metadata={"format": "tf"})
    refused(llm, tmp_path / "out", f"Cannot read {llm / 'model.safetensors'} as safetensors", "valid metadata")


def test_unsupported_stored_dtype_is_named_with_its_tensor_and_file(tmp_path):
    state = original_llm_state()
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.float8_e4m3fn)
    llm = write_llm(tmp_path / "llm", state, "safetensors-single")
    refused(llm, tmp_path / "out", str(llm / "model.safetensors"), "model.norm.weight", "F8_E4M3", "not supported")


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not valid JSON"), (json.dumps({"metadata": {}}), "no weight_map"), ("[]", "no weight_map")],
    ids=["invalid-json", "no-weight-map", "a-list"],
)
def test_broken_index_file_is_named_with_its_problem(tmp_path, content, problem):
    llm = write_llm(tmp_path / "llm", original_llm_state(), "safetensors-sharded")
    (llm / "model.safetensors.index.json").write_text(content)
    refused(llm, tmp_path / "out", str(llm / "model.safetensors.index.json"), problem)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda config: {k: v for k, v in config.items() if k != "vocab_size"}, "vocab_size"),
        (lambda config: {k: v for k, v in config.items() if k != "hidden_size"}, "hidden_size"),
        (lambda config: {**config, "num_hidden_layers": "two"}, "num_hidden_layers"),
    ],
    ids=["no-vocab-size", "no-hidden-size", "non-integer-layers"],
)
def test_config_missing_an_architecture_setting_names_the_setting_not_a_tensor(tmp_path, edit, named):
    llm = copy_llm(tmp_path)
    config = edit_config(llm, edit)
    message = refused(llm, tmp_path / "out", str(config), named)
    assert "shape" not in message


def test_config_that_is_not_a_json_object_is_refused(tmp_path):
    llm = copy_llm(tmp_path)
    (llm / "config.json").write_text("[1, 2]")
    refused(llm, tmp_path / "out", str(llm / "config.json"), "JSON object", "list")


@pytest.mark.parametrize(("damage", "problem"), [("delete", "missing"), ("garbage", "not a valid sentencepiece model")])
def test_missing_or_corrupt_tokenizer_model_is_named(tmp_path, damage, problem):
    llm = copy_llm(tmp_path)
    tokenizer = llm / "tokenizer.model"
    if damage == "delete":
        tokenizer.unlink()
    else:
        tokenizer.write_bytes(b"\x00\x01 this is not a sentencepiece model" * 10)
    refused(llm, tmp_path / "out", str(tokenizer), problem)


def test_output_whose_parent_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" / "out"
    with pytest.raises(ConversionError, match=f"{tmp_path / 'file'} is a file"):
        convert(FIXTURE_DIR / "llm", output)
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_output_location_is_refused_with_the_folder_named(tmp_path, monkeypatch):
    # The tests run as root, for whom chmod cannot make a folder read-only: fail the way a read-only folder fails.
    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ConversionError, match=f"Cannot write into {tmp_path}.*Permission denied"):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")


def test_a_float64_tensor_does_not_make_the_output_float64_and_is_warned_about_once(tmp_path, caplog):
    state = original_llm_state()
    state["lm_head.weight"] = state["lm_head.weight"].double()
    state["model.norm.weight"] = state["model.norm.weight"].double()
    llm = write_llm(tmp_path / "llm", state, "safetensors-single")
    with caplog.at_level(logging.WARNING):
        tensors = converted_tensors(convert(llm, tmp_path / "out"))
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float32}  # the dtype of the other LLM weights
    warnings = [record.getMessage() for record in caplog.records if "float64" in record.getMessage()]
    assert len(warnings) == 1 and "lm_head.weight" in warnings[0] and "float32" in warnings[0], warnings
    caplog.clear()
    tensors = converted_tensors(convert(llm, tmp_path / "bf16", dtype="bfloat16"))
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert torch.equal(tensors["lm_head.weight"][:800], state["lm_head.weight"].bfloat16())


def test_cli_reports_a_broken_input_on_one_line_with_status_2(tmp_path, capsys):
    llm = write_llm(tmp_path / "llm", original_llm_state(), "safetensors-single")
    (llm / "model.safetensors").write_bytes(b"\x08\x00")
    status = convert_convllava.main(
        ["--llm", str(llm), "--vision", str(FIXTURE_DIR / "vision"), "--output", str(tmp_path / "out")]
    )
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("error: ") and str(llm / "model.safetensors") in error
    assert "Traceback" not in error
