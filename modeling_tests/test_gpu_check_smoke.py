"""`benchmarks/gpu_check.sh --tiny` runs end to end on the CPU and reports every model, precision and resolution."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(not GPU_CHECK.exists(), reason="benchmarks/ is not part of this checkout")
def test_gpu_check_tiny_reports_every_model_precision_and_resolution(tmp_path):
    pytest.importorskip("bitsandbytes")
    command = ["bash", str(GPU_CHECK), str(tmp_path), "--tiny", "--decode-tokens", "2"]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable}
    )
    assert finished.returncode == 0, finished.stderr[-4000:]

    report = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    visual_tokens = {
        name: {
            precision: {resolution: row["visual_tokens"] for resolution, row in run["by_resolution"].items()}
            for precision, run in runs.items()
        }
        for name, runs in report["models"].items()
    }
    assert visual_tokens == {
        "ConvLLaVA-1536": {"fp32": {"128": 4, "192": 9, "256": 16}, "nf4": {"128": 4, "192": 9, "256": 16}},
        "LLaVA-1.5 (ViT-L/14-336)": {"fp32": {"56": 16}, "nf4": {"56": 16}},
        "LLaVA-NeXT (anyres 672)": {"fp32": {"112": 88}, "nf4": {"112": 88}},
    }
    for runs in report["models"].values():
        assert runs["nf4"]["quantized_linears"] > 0 and runs["nf4"]["quantized_outside_language_model"] == 0
        for run in runs.values():
            assert all(row["ttft_ms"] > 0 for row in run["by_resolution"].values())
