"""
Every benchmark script runs in its smoke mode (tiny shapes or small arguments), and one figure of each equals a hand
computation: FLOPs from the ViT / Llama / ConvNeXt formulas, bytes from parameter counts, content sizes from the
"preserve" rounding rule. (gpu_check.sh: test_gpu_check_smoke.py; vllm_check.py: test_vllm.py; lmms_eval_slice.sh:
test_lmms_eval_plugin.py, in the environments that have vLLM and lmms-eval.)
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
pytestmark = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="benchmarks/ is not part of this checkout")

TINY_VISION = {"hidden_sizes": [16, 24, 32, 48, 64], "depths": [1, 1, 2, 1, 1]}  # model_shapes.TINY_CONVNEXT
TINY_TEXT = {"hidden": 64, "intermediate": 128, "layers": 2}  # model_shapes.TINY_LLAMA
VICUNA_VOCAB = 32064  # Vicuna-7B's 32000 pieces + ConvLLaVA's padding to a multiple of 64
QUESTION_TOKENS = 64


def run_benchmark(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert finished.returncode == 0, finished.stderr[-4000:]


def vit_flops(hidden: int, intermediate: int, layers: int, patches: int, patch: int, text_hidden: int) -> int:
    """CLIP ViT (+ CLS token) on one image and LLaVA's 2-layer projector on its patch tokens: 2 FLOPs per MAC."""
    tokens = patches + 1
    embedding = 2 * patches * (3 * patch * patch) * hidden
    layer = 2 * tokens * 4 * hidden * hidden + 2 * tokens * 2 * hidden * intermediate + 2 * 2 * tokens * tokens * hidden
    projector = 2 * patches * hidden * text_hidden + 2 * patches * text_hidden * text_hidden
    return embedding + layers * layer + projector


def llama_prefill_flops(hidden: int, intermediate: int, layers: int, tokens: int, vocab: int) -> int:
    """Llama prefill (q, k, v, o; gate, up, down; full attention), logits of the last position only."""
    layer = 2 * tokens * 4 * hidden * hidden + 2 * tokens * 3 * hidden * intermediate + 2 * 2 * tokens * tokens * hidden
    return layers * layer + 2 * hidden * vocab


def convnext_flops(side: int, widths: list[int], depths: list[int], text_hidden: int) -> int:
    """The five-stage ConvNeXt tower (4x4 stem, 2x2 downsampling, 7x7 depthwise + 4x MLP blocks) and the projector."""
    size = side // 4
    flops = 2 * 3 * widths[0] * 16 * size * size
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        if stage:
            size //= 2
            flops += 2 * widths[stage - 1] * width * 4 * size * size
        flops += depth * (2 * width * 49 * size * size + 2 * 2 * size * size * width * 4 * width)
    tokens = size * size
    return flops + 2 * tokens * widths[-1] * text_hidden + 2 * tokens * text_hidden * text_hidden


def test_cost_model_tiny_gives_llava15_flops_of_the_vit_and_llama_formulas(tmp_path):
    run_benchmark("cost_model.py", "--tiny", "--output-dir", str(tmp_path))
    report = json.loads((tmp_path / "cost_model.json").read_text())
    llava = report["models"]["LLaVA-1.5 (ViT-L/14-336)"]
    assert report["tiny"] and llava["visual_tokens"] == 16  # 56 px / 14 px patches = 4x4
    vision = vit_flops(32, 64, 2, patches=16, patch=14, text_hidden=TINY_TEXT["hidden"])
    assert llava["vision_gflops"] * 1e9 == pytest.approx(vision, rel=1e-12)
    prefill = llama_prefill_flops(*TINY_TEXT.values(), tokens=16 + QUESTION_TOKENS, vocab=VICUNA_VOCAB)
    assert llava["llm_prefill_gflops"] * 1e9 == pytest.approx(prefill, rel=1e-12)
    assert report["models"]["ConvLLaVA-1536"]["visual_tokens"] == (1536 // 64) ** 2


def test_recorded_cost_model_llava15_flops_are_the_vit_l_and_vicuna_7b_formulas():
    report = json.loads((BENCHMARKS / "results" / "cost_model.json").read_text())
    llava = report["models"]["LLaVA-1.5 (ViT-L/14-336)"]
    vision = vit_flops(1024, 4096, 24, patches=576, patch=14, text_hidden=4096)  # CLIP ViT-L/14 at 336 px
    assert llava["vision_gflops"] * 1e9 == pytest.approx(vision, rel=1e-12)
    prefill = llama_prefill_flops(4096, 11008, 32, tokens=576 + QUESTION_TOKENS, vocab=VICUNA_VOCAB)
    assert llava["llm_prefill_gflops"] * 1e9 == pytest.approx(prefill, rel=1e-12)


def test_cpu_vision_tower_tiny_counts_the_convnext_formula_and_matches_the_bare_tower(tmp_path):
    output = tmp_path / "tower.json"
    run_benchmark(
        "cpu_vision_tower.py", "--tiny", "--resolutions", "128", "--rounds", "1", "--variants", "baseline", "ours",
        "--output", str(output),
    )  # fmt: skip
    result = json.loads(output.read_text())["resolutions"]["128"]
    flops = convnext_flops(128, TINY_VISION["hidden_sizes"], TINY_VISION["depths"], TINY_TEXT["hidden"])
    assert result["gflops"] * 1e9 == pytest.approx(flops, rel=1e-12)
    ours = result["variants"]["ours"]
    assert ours["within_1e-4"] and ours["achieved_gflops_per_s"] == pytest.approx(result["gflops"] / ours["median_s"])


def test_preprocessing_throughput_small_is_identical_to_the_original_recipe(tmp_path):
    output = tmp_path / "preprocessing.json"
    run_benchmark("preprocessing_throughput.py", "--images", "3", "--resolutions", "64", "--rounds", "1",
                  "--output", str(output))  # fmt: skip
    report = json.loads(output.read_text())
    assert report["images"]["count"] == 3
    for variant in report["resolutions"]["64"].values():
        assert variant["identical_to_original"]
        assert variant["images_per_s"] == pytest.approx(3 / statistics.median(variant["runs_s"]))


def test_thin_image_memory_small_gives_the_preserve_mode_content_sizes(tmp_path):
    output = tmp_path / "thin.json"
    run_benchmark("thin_image_memory.py", "--resolution", "128", "--sizes", "1000", "--modes", "preserve",
                  "--output", str(output))  # fmt: skip
    cases = {(case["width"], case["height"]): case for case in json.loads(output.read_text())["cases"]}
    # the long side becomes 128 px, the 1 px side rounds to 0 and is clamped to 64: (height, width)
    assert cases[(1000, 1)]["image_sizes"] == [64, 128] and cases[(1, 1000)]["image_sizes"] == [128, 64]
    assert all(case["refused"] is None and case["peak_rss_mib"] > 0 for case in cases.values())


def test_conversion_memory_tiny_writes_the_bytes_of_the_parameter_count(tmp_path):
    output = tmp_path / "memory.json"
    run_benchmark("benchmark_conversion_memory.py", "--tiny", "--workdir", str(tmp_path), "--output", str(output))
    report = json.loads(output.read_text())
    hidden, intermediate, layers = TINY_TEXT.values()
    widths, depths = TINY_VISION["hidden_sizes"], TINY_VISION["depths"]
    vision = 3 * widths[0] * 16 + widths[0] + 2 * widths[0]  # stem conv and its layer norm
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        if stage:  # layer norm and 2x2 conv
            vision += 2 * widths[stage - 1] + widths[stage - 1] * width * 4 + width
        # depthwise 7x7 conv, layer norm, the two linears of the 4x MLP, layer scale
        vision += depth * (49 * width + width + 2 * width + 8 * width * width + 4 * width + width + width)
    projector = widths[-1] * hidden + hidden + hidden * hidden + hidden
    llm = 2 * 32000 * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) + hidden
    assert report["llm_layers"] == layers and report["input_bytes"] == 2 * (vision + projector + llm)  # bf16
    assert report["peak_rss_over_output"] == round(report["peak_rss_bytes"] / report["output_safetensors_bytes"], 3)
