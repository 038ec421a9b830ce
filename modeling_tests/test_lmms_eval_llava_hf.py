"""
lmms-eval's BUILT-IN `llava_hf` model (not this package's plugin) on the stock-layout (`fast_vlm`) conversion, with
`convllava_hf` blocked from import, on the tiny tasks of test_lmms_eval_plugin.py. As shipped (lmms-eval 0.7.3) it
refuses the folder: its model map has no `fast_vlm`. With that one entry added from the user's side
(lmms_eval_llava_hf_launcher.py) its answers equal `generate` of the stock classes on every document with an image;
it answers nothing to a text-only one. It ignores `until` stop strings. `.ci/run` runs this in .venv/lmms.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed; .ci/run runs this file in .venv/lmms")
pytest.importorskip("decord", reason="lmms-eval's llava_hf imports decord at import time (decord==0.6.0)")

from converted_tiny import vicuna_prompt  # noqa: E402
from test_lmms_eval_plugin import (  # noqa: E402
    MC_MAX_NEW_TOKENS,
    MC_SUFFIX,
    YESNO_MAX_NEW_TOKENS,
    YESNO_SUFFIX,
    answers,
    offline_env,
    read_outputs,
    workspace,  # noqa: E402, F401  (the converted folder, the tiny tasks and datasets)
)

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny(workspace) -> dict:  # noqa: F811
    """test_lmms_eval_plugin's workspace: the stock-layout fixture folder, the tiny tasks and their datasets."""
    return workspace


def llava_hf_command(tiny, tasks: str, output: Path) -> list[str]:
    return [
        "--model", "llava_hf", "--model_args", f"pretrained={tiny['model']},dtype=float32,device_map=cpu",
        "--tasks", tasks,
        "--include_path", str(tiny["tasks"]), "--device", "cpu", "--batch_size", "1", "--log_samples",
        "--output_path", str(output), "--verbosity", "WARNING",
    ]  # fmt: skip


def run(tiny, script: str, arguments: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, str(HERE / script), *arguments]
    return subprocess.run(command, env=offline_env(tiny["root"]), capture_output=True, text=True, timeout=900)


def stock_answer(model, processor, prompt: str, image, max_new_tokens: int) -> str:
    """What llava_hf does, by hand: greedy `generate` on the Vicuna prompt, decoded, no stop strings applied."""
    inputs = processor(images=image, text=vicuna_prompt(prompt, with_image=image is not None), return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_shipped_llava_hf_refuses_the_stock_folder_for_want_of_fast_vlm_in_its_model_map(tiny, tmp_path):
    """Fails loudly once lmms-eval maps `fast_vlm`: then the launcher's workaround is no longer needed."""
    arguments = ["lmms_eval", *llava_hf_command(tiny, "convllava_tiny_yesno", tmp_path)]
    finished = run(tiny, "blocked_run.py", arguments)
    log = finished.stdout + finished.stderr
    assert "KeyError: 'fast_vlm'" in log and "model_type = model_map[model_type]" in log, log[-3000:]
    assert not list(tmp_path.rglob("*_results.json"))


@pytest.fixture(scope="module")
def evaluated(tiny) -> dict:
    output = tiny["root"] / "llava_hf_out"
    tasks = "convllava_tiny_yesno,convllava_tiny_mc"
    finished = run(tiny, "lmms_eval_llava_hf_launcher.py", llava_hf_command(tiny, tasks, output))
    log = finished.stdout + finished.stderr
    assert list(output.rglob("*_results.json")), log[-4000:]  # lmms-eval exits 0 even when evaluation failed
    return {"samples": read_outputs(output)[1], "log": log}


@pytest.fixture(scope="module")
def stock(tiny):
    model = AutoModelForImageTextToText.from_pretrained(tiny["model"]).eval()
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    return model, AutoProcessor.from_pretrained(tiny["model"])


def test_llava_hf_yes_no_answers_equal_stock_generate(tiny, evaluated, stock):
    expected = [
        stock_answer(*stock, row["question"] + YESNO_SUFFIX, row["image"], YESNO_MAX_NEW_TOKENS)
        for row in tiny["yesno_rows"]
    ]
    assert answers(evaluated["samples"]["convllava_tiny_yesno"]) == expected


def mc_prompt(row: dict) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"]))
    return row["question"] + options + MC_SUFFIX


def test_llava_hf_multiple_choice_answers_equal_stock_generate_on_image_documents(tiny, evaluated, stock):
    rows = tiny["mc_rows"]
    got = answers(evaluated["samples"]["convllava_tiny_mc"])
    expected = [stock_answer(*stock, mc_prompt(row), row["image"], MC_MAX_NEW_TOKENS) for row in rows]
    with_image = [index for index, row in enumerate(rows) if row["image"] is not None]
    assert [got[index] for index in with_image] == [expected[index] for index in with_image]


def test_llava_hf_answers_nothing_to_a_text_only_document(tiny, evaluated):
    """
    lmms-eval runs its chat variant (`lmms_eval.models.chat.llava_hf`), which calls the processor with `images=[]` for
    a text-only request: `LlavaProcessor` returns `pixel_values` of shape (0,), the ConvNeXt indexes its channels, and
    llava_hf logs the error and records an empty answer.
    """
    (text_only,) = [index for index, row in enumerate(tiny["mc_rows"]) if row["image"] is None]
    assert answers(evaluated["samples"]["convllava_tiny_mc"])[text_only] == ""
    assert "Error tuple index out of range in generating" in evaluated["log"], evaluated["log"][-3000:]
