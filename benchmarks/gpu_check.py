"""
Benchmark 4, one GPU: full-size 7B-shaped ConvLLaVA-1536 (random weights) in bfloat16 and in bitsandbytes nf4 vs
LLaVA-1.5- and LLaVA-NeXT-shaped models on the same Llama. For each model, precision and input resolution: visual
tokens, time to first token (vision + prefill + 1 token, median), decode tokens/s and peak GPU memory; JSON into the
given folder. `--tiny` runs the same code on the CPU with tiny widths and depths, in float32 and with ConvLLaVA
images of 128-256 px (a smoke test; its timings mean nothing).

All three models quantize the same modules in 4-bit: the language model's decoder linears (vision tower, projector
and lm_head stay in bfloat16), so their memory and speed compare like for like.

    bash benchmarks/gpu_check.sh OUTPUT_DIR [--tiny]
"""

import argparse
import gc
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

from _common import machine, write_json
from model_shapes import (
    IMAGE_TOKEN_ID,
    LLAVA_NEXT_IMAGE_SIDES,
    QUESTION_TOKENS,
    convllava_config,
    image_inputs,
    llava15_config,
    llava_next_config,
)

TINY_RESOLUTIONS = [128, 192, 256]  # 2x2, 3x3 and 4x4 visual tokens: the smoke test stays fast
SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
GIB = 2**30


class Device:
    """Where the check runs, with timing and memory statistics that also work (as no-ops) on the CPU."""

    def __init__(self, tiny: bool):
        if not tiny and not torch.cuda.is_available():
            raise SystemExit("No CUDA GPU found; run with --tiny for the CPU smoke test.")
        self.type = "cpu" if tiny else "cuda"
        self.dtype = torch.float32 if tiny else torch.bfloat16  # CPU bf16 convolutions are slow; tiny only smoke-tests
        if tiny:
            torch.set_num_threads(1)  # tiny ops gain nothing from threads and suffer from busy CI machines

    def synchronize(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, function: Callable[[], object]) -> float:
        self.synchronize()
        start = time.perf_counter()
        function()
        self.synchronize()
        return time.perf_counter() - start

    def reset_peak(self) -> None:
        if self.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / GIB if self.type == "cuda" else None

    def allocated_gib(self) -> float | None:
        return torch.cuda.memory_allocated() / GIB if self.type == "cuda" else None

    def free(self) -> None:
        if self.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def prompt(model, config, device: Device, resolution: int | None, question: torch.Tensor) -> dict:
    """
    `generate` inputs: BOS, one image token per visual feature (counted by the model itself), the question. The
    resolution applies to ConvLLaVA; the LLaVA shapes always take their own input size.
    """
    images = image_inputs(config, device=device.type, dtype=model.dtype, resolution=resolution)
    with torch.no_grad():
        features = model.get_image_features(**images).pooler_output
    features = [features] if isinstance(features, torch.Tensor) else features
    visual_tokens = sum(feature.reshape(-1, feature.shape[-1]).shape[0] for feature in features)
    input_ids = torch.cat([torch.tensor([1]), torch.full((visual_tokens,), IMAGE_TOKEN_ID), question])[None]
    input_ids = input_ids.to(device.type)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **images}


def measure(
    model, config, device: Device, resolutions, question: torch.Tensor, decode_tokens: int, repeats: int
) -> dict:
    """TTFT, decode speed and peak memory of `model` at each resolution."""
    results = {}
    for resolution in resolutions:
        inputs = prompt(model, config, device, resolution, question)

        def generate(new_tokens: int, inputs: dict = inputs) -> None:
            with torch.no_grad():
                model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
                )

        generate(2)  # warm-up
        device.reset_peak()
        ttft = statistics.median(device.timed(lambda: generate(1)) for _ in range(repeats))
        decode_s = device.timed(lambda: generate(1 + decode_tokens)) - ttft
        results[str(resolution)] = {
            "visual_tokens": inputs["input_ids"].eq(IMAGE_TOKEN_ID).sum().item(),
            "prompt_tokens": inputs["input_ids"].shape[1],
            "ttft_ms": 1e3 * ttft,
            "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else None,
            "peak_gib": device.peak_gib(),
        }
        print(f"  {resolution:>5}: {results[str(resolution)]}", flush=True)
    return results


def check_model(name: str, config, resolutions, device: Device, args, question: torch.Tensor) -> dict:
    print(f"{name}:", flush=True)
    row = {}
    device.free()
    device.reset_peak()
    start = time.perf_counter()
    with torch.device(device.type):
        model = AutoModelForImageTextToText.from_config(config, dtype=device.dtype).eval()
    row["bf16" if device.dtype == torch.bfloat16 else "fp32"] = {
        "build_s": time.perf_counter() - start,
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "weights_gib": device.allocated_gib(),
        "by_resolution": measure(model, config, device, resolutions, question, args.decode_tokens, args.repeats),
    }
    if importlib.util.find_spec("bitsandbytes") is None:
        row["nf4"] = {"skipped": "bitsandbytes is not installed"}
        return row
    model_class, state_dict = type(model), {key: value.cpu() for key, value in model.state_dict().items()}
    del model
    device.free()
    device.reset_peak()
    start = time.perf_counter()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device.dtype,
        llm_int8_skip_modules=SKIP_MODULES,
    )
    model = model_class.from_pretrained(
        None,
        config=config,
        state_dict=state_dict,
        quantization_config=quantization,
        dtype=device.dtype,
        device_map={"": device.type},
    ).eval()
    del state_dict
    quantized = [name for name, module in model.named_modules() if type(module).__name__ == "Linear4bit"]
    row["nf4"] = {
        "quantized_linears": len(quantized),
        "quantized_outside_language_model": sum(not n.startswith("model.language_model.") for n in quantized),
        "quantize_s": time.perf_counter() - start,
        "load_peak_gib": device.peak_gib(),
        "weights_gib": device.allocated_gib(),
        "memory_footprint_gib": model.get_memory_footprint() / GIB,
        "by_resolution": measure(model, config, device, resolutions, question, args.decode_tokens, args.repeats),
    }
    del model
    device.free()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (smoke test)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="new tokens timed for decode (128; tiny 4)")
    parser.add_argument("--repeats", type=int, default=None, help="TTFT repeats, median taken (3; tiny 1)")
    args = parser.parse_args()
    args.decode_tokens = args.decode_tokens or (4 if args.tiny else 128)
    args.repeats = args.repeats or (1 if args.tiny else 3)

    device = Device(args.tiny)
    torch.manual_seed(0)
    question = torch.randint(3, IMAGE_TOKEN_ID, (QUESTION_TOKENS,))
    vit_side = llava15_config(args.tiny).vision_config.image_size
    models = {
        "ConvLLaVA-1536": (convllava_config(1536, args.tiny), TINY_RESOLUTIONS if args.tiny else [768, 1024, 1536]),
        "LLaVA-1.5 (ViT-L/14-336)": (llava15_config(args.tiny), [vit_side]),
        "LLaVA-NeXT (anyres 672)": (llava_next_config(args.tiny), [LLAVA_NEXT_IMAGE_SIDES * vit_side]),
    }
    payload = {
        "tiny": args.tiny,
        "device": machine()["cuda_device"] or "cpu",
        "question_tokens": QUESTION_TOKENS,
        "decode_tokens": args.decode_tokens,
        "ttft_repeats": args.repeats,
        "models": {},
    }
    start = time.perf_counter()
    for name, (config, resolutions) in models.items():
        payload["models"][name] = check_model(name, config, resolutions, device, args, question)
        payload["wall_s"] = time.perf_counter() - start
        write_json(payload, args.output_dir / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json"))


if __name__ == "__main__":
    main()
