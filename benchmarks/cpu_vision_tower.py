"""
Benchmark 2: CPU wall time of the full-size ConvLLaVA vision tower + projector (float32, random weights, batch 1).

Variants, each timed in the same run as the baseline and reported as a ratio to it:
  baseline       a bare transformers `ConvNextModel` sharing the tower's weights, then the same projector
  ours           `ConvLlavaModel.get_image_features` (overhead vs baseline should be ~0)
  channels_last  ours on a copy of the tower with weights and input in channels-last memory format
  bf16_autocast  ours under `torch.autocast("cpu", torch.bfloat16)`
  compile        ours under `torch.compile` (its compile time is the warm-up round's first_call_s)

Rounds run every variant once, in turn, so load from other processes hits all of them alike; times are medians over
rounds and ratios are medians of per-round ratios. Each variant's output is compared with the baseline's (max abs
difference relative to the baseline's max abs value; the target is <= 1e-4). Achieved GFLOP/s use FlopCounterMode's
count and are compared with this machine's float32 (bfloat16 for autocast) 2048x2048 matmul rate, measured at the
start of every round (ratios per round, then the median).

    python benchmarks/cpu_vision_tower.py --resolutions 768 [1024] [--rounds 3]
    python benchmarks/cpu_vision_tower.py --tiny --resolutions 128 --rounds 1 --variants baseline ours \
        --output /tmp/tower.json    # smoke test: a tiny tower, 256x256 matmuls (timings meaningless)
"""

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import ConvNextModel
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from _common import RESULTS_DIR, median_seconds, write_json
from convllava_hf import ConvLlavaModel
from cost_model import vision_cost
from model_shapes import convllava_config

VARIANTS = ("baseline", "ours", "channels_last", "bf16_autocast", "compile")
TOLERANCE = 1e-4


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats, warmup=3)["median_s"] / 1e9


def build(resolution: int, tiny: bool = False) -> tuple[ConvLlavaModel, ConvNextModel]:
    """ConvLlavaModel with a real tower and projector (its 7B language model stays on the meta device, unused), and a
    bare ConvNextModel sharing the tower's weights. Layer scales are drawn in [0.1, 1] so that every block matters."""
    config = convllava_config(resolution, tiny)
    with torch.device("meta"):
        model = ConvLlavaModel(config)
        bare = ConvNextModel(config.vision_config)
    torch.manual_seed(0)
    model.vision_tower = ConvNextModel(config.vision_config)
    model.multi_modal_projector = LlavaMultiModalProjector(config)
    with torch.no_grad():
        for name, parameter in model.vision_tower.named_parameters():
            if name.endswith("layer_scale_parameter"):
                parameter.uniform_(0.1, 1.0)
    bare.load_state_dict(model.vision_tower.state_dict(), assign=True)
    return model.eval(), bare.eval()


def run_variants(
    model: ConvLlavaModel,
    bare: ConvNextModel,
    pixels: torch.Tensor,
    gflops: float,
    rounds: int,
    variants,
    matmul_size: int = 2048,
) -> dict:
    """Time every variant in `rounds` round-robin rounds after a warm-up round; outputs checked against baseline."""
    projector = model.multi_modal_projector
    channels_last_model = copy.deepcopy(model)
    channels_last_model.vision_tower.to(memory_format=torch.channels_last)
    channels_last_pixels = pixels.contiguous(memory_format=torch.channels_last)

    def baseline() -> torch.Tensor:
        return projector(bare(pixels).last_hidden_state.flatten(2).transpose(1, 2))[0]

    def ours() -> torch.Tensor:
        return model.get_image_features(pixels).pooler_output[0]

    def channels_last() -> torch.Tensor:
        return channels_last_model.get_image_features(channels_last_pixels).pooler_output[0]

    def bf16_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours().float()

    functions = {"baseline": baseline, "ours": ours, "channels_last": channels_last}
    functions |= {"bf16_autocast": bf16_autocast, "compile": torch.compile(ours)}
    functions = {name: functions[name] for name in variants}
    times: dict[str, list[float]] = {name: [] for name in functions}
    outputs, first_call_s, matmul_rates = {}, {}, {"float32": [], "bfloat16": []}
    with torch.no_grad():
        for round_index in range(rounds + 1):  # round 0 warms up (and compiles)
            if round_index:
                for dtype, rates in matmul_rates.items():
                    rates.append(matmul_gflops(getattr(torch, dtype), matmul_size))
            for name, function in functions.items():
                start = time.perf_counter()
                output = function()
                elapsed = time.perf_counter() - start
                if round_index == 0:
                    outputs[name], first_call_s[name] = output, elapsed
                else:
                    times[name].append(elapsed)
                print(f"  round {round_index} {name:14s} {elapsed:7.2f} s", flush=True)
    reference = outputs["baseline"]
    matmul_dtype = {name: "bfloat16" if name == "bf16_autocast" else "float32" for name in functions}
    results = {}
    for name in functions:
        relative_error = ((outputs[name] - reference).abs().max() / reference.abs().max()).item()
        results[name] = {
            "median_s": statistics.median(times[name]),
            "runs_s": times[name],
            "first_call_s": first_call_s[name],
            "ratio_to_baseline": statistics.median(t / b for t, b in zip(times[name], times["baseline"])),
            "achieved_gflops_per_s": gflops / statistics.median(times[name]),
            "fraction_of_matmul_rate": statistics.median(
                gflops / t / rate for t, rate in zip(times[name], matmul_rates[matmul_dtype[name]])
            ),
            "max_abs_diff_relative_to_baseline": relative_error,
            "within_1e-4": relative_error <= TOLERANCE,
        }
    return {"matmul_gflops_per_round": matmul_rates, "variants": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[768])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "cpu_vision_tower.json")
    parser.add_argument("--tiny", action="store_true", help="a tiny tower and small matmuls (smoke test)")
    args = parser.parse_args()
    variants = ["baseline", *(v for v in args.variants if v != "baseline")]

    payload = {"load_average_start": os.getloadavg(), "rounds": args.rounds, "tiny": args.tiny, "resolutions": {}}
    for resolution in args.resolutions:
        gflops = vision_cost(convllava_config(resolution, args.tiny))["vision_gflops"]
        model, bare = build(resolution, args.tiny)
        pixels = torch.randn(1, 3, resolution, resolution)
        print(f"{resolution}x{resolution}: {gflops:.0f} GFLOPs per image")
        measured = run_variants(model, bare, pixels, gflops, args.rounds, variants, 256 if args.tiny else 2048)
        print(f"  matmul GFLOP/s per round: {measured['matmul_gflops_per_round']}")
        for name, result in measured["variants"].items():
            print(
                f"  {name:14s} median {result['median_s']:6.2f} s  x{result['ratio_to_baseline']:.3f}  "
                f"{result['achieved_gflops_per_s']:5.1f} GFLOP/s ({result['fraction_of_matmul_rate']:.0%} of matmul)  "
                f"rel. diff {result['max_abs_diff_relative_to_baseline']:.1e}"
            )
        payload["resolutions"][str(resolution)] = {"gflops": gflops, **measured}
        del model, bare
    payload["load_average_end"] = os.getloadavg()
    write_json(payload, args.output)


if __name__ == "__main__":
    main()
