"""
Two-process training actually run on the CPU (gloo): `accelerate launch` of convllava-train with the shipped
configs, against a one-process run with the same global batch (same 4 samples per step, seeded sampler).

accelerate enables FSDP only on GPU-like devices: on the CPU the shipped FSDP config runs as MULTI_CPU (DDP) and
convllava-train says so. DeepSpeed ZeRO-2/3 do run on the CPU; they need the `deepspeed` package, which the core
install lacks, so `.ci/run` runs those cases in their own environment (`.venv/deepspeed`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convllava_hf import ConvLlavaForConditionalGeneration
from test_training_stages import build_dataset, losses, save_base_model, train

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = REPOSITORY / "examples" / "accelerate_configs"
STEPS = 6
#: Stated tolerance: the per-step losses of the two runs agree to this relative difference (measured: at most 7e-7).
LOSS_RTOL = 1e-4
#: Trained weights agree to this absolute difference.
WEIGHT_ATOL = 1e-4
TIMEOUT_S = 300

#: Everything except the split of the global batch. "pad" mode: every image has the same size, so every process
#: calls the vision tower once per step, as ZeRO-3 (and FSDP) parameter gathering requires.
COMMON = [
    "--stage=3",
    f"--max_steps={STEPS}",
    "--global_batch_size=4",
    "--learning_rate=2e-3",
    "--lr_scheduler_type=constant",
    "--image_aspect_ratio=pad",
    "--activation_checkpointing=false",
    "--seed=0",
]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Path]:
    """Base model, data and the one-process reference run (4 samples per step on one process)."""
    root = tmp_path_factory.mktemp("distributed")
    paths = {"data": build_dataset(root / "data"), "base": save_base_model(root / "base"), "single": root / "single"}
    train(3, paths["base"], paths["data"], paths["single"], "--per_device_train_batch_size=4", *COMMON)
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config: str, single: dict[str, Path], output: Path, *extra: str, status: int = 0) -> str:
    """convllava-train in 2 processes through `accelerate launch --config_file CONFIG`; returns its log."""
    data = single["data"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
        "--num_processes=2", "--mixed_precision=no",  # the shipped 8-GPU bf16 configs, on 2 CPU processes
        "--main_process_ip=127.0.0.1", f"--main_process_port={free_port()}",
        "-m", "convllava_hf.training.cli",
        f"--model={single['base']}", f"--data={data}", f"--image-folder={data.parent / 'images'}", f"--output={output}",
        "--per_device_train_batch_size=2", *COMMON, "--use_cpu", "--logging_steps=1", "--save_strategy=no",
        "--report_to=none", "--disable_tqdm=true", "--dataloader_num_workers=0", "--log_level=info", *extra,
    ]  # fmt: skip
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), *sys.path]),
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
    }
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its worker processes
        log, _ = process.communicate()
        pytest.fail(f"The {config} run did not finish in {TIMEOUT_S} s:\n{log[-4000:]}")
    assert (process.returncode == 0) == (status == 0), log[-4000:]
    return log


def check_against_single_process(output: Path, single: dict[str, Path]) -> None:
    """Same loss curve within `LOSS_RTOL`, and a saved model that loads and holds the same weights."""
    distributed, reference = losses(output), losses(single["single"])
    print(json.dumps({"two_processes": distributed, "one_process": reference}))
    assert len(distributed) == STEPS and distributed[-1] < 0.5 * distributed[0]
    assert distributed == pytest.approx(reference, rel=LOSS_RTOL)
    state = ConvLlavaForConditionalGeneration.from_pretrained(output).state_dict()
    expected = load_file(single["single"] / "model.safetensors")
    assert state.keys() >= expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)
    assert not torch.equal(state["lm_head.weight"], load_file(single["base"] / "model.safetensors")["lm_head.weight"])


@pytest.mark.distributed
def test_fsdp_config_on_the_cpu_runs_two_processes_says_it_is_not_fsdp_and_matches_one_process(single, tmp_path):
    log = launch("fsdp", single, tmp_path / "out")
    assert "Distributed: MULTI_CPU over 2 process(es)" in log, log[-4000:]
    assert "asks for FSDP, but accelerate enables FSDP only on GPUs" in log
    check_against_single_process(tmp_path / "out", single)


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_configs_run_two_processes_and_match_one_process(single, tmp_path, config):
    pytest.importorskip("deepspeed", reason="DeepSpeed runs in .ci/run's .venv/deepspeed")
    log = launch(config, single, tmp_path / "out")
    assert "Distributed: DEEPSPEED over 2 process(es)" in log, log[-4000:]
    check_against_single_process(tmp_path / "out", single)


@pytest.mark.distributed
def test_zero3_refuses_preserve_mode_whose_per_size_tower_calls_would_deadlock_the_processes(single, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed runs in .ci/run's .venv/deepspeed")
    log = launch("deepspeed_zero3", single, tmp_path / "out", "--image_aspect_ratio=preserve", status=1)
    assert "every process must run the vision tower equally often" in log, log[-4000:]
