"""
Peak memory of `convllava-convert` on a synthetic, full-size (ConvLLaVA-7B shaped) original checkpoint.

Writes an original-format checkpoint of random bf16 weights (LLM: two `pytorch_model-*.bin` shards + index like the
released ConvLLaVA-sft-*; vision: a 5-stage ConvNeXt-L `pytorch_model.bin`; a 32000-piece sentencepiece tokenizer),
runs the converter in a child process while sampling its memory, and reports the peak RSS against the size of the
converted weights (target: below 1.3x). RssFile counts pages of the memory-mapped input shards, RssAnon the
process's own allocations. Everything is written under --workdir and deleted afterwards (unless --keep).

    python benchmarks/benchmark_conversion_memory.py --workdir /var/tmp/bench             # full 7B, ~30 GB of disk
    python benchmarks/benchmark_conversion_memory.py --workdir /var/tmp/bench --layers 4  # quick run
    python benchmarks/benchmark_conversion_memory.py --tiny --output /tmp/memory.json   # smoke test: tiny widths
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from sentencepiece import sentencepiece_model_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from _common import RESULTS_DIR, write_json  # noqa: E402
from convllava_hf import ConvLlavaConfig  # noqa: E402
from convllava_hf.conversion.laion_convnext import clip_preprocessor_config  # noqa: E402
from convllava_hf.conversion.weight_plan import POOLING_LAYERNORM, expected_parameters  # noqa: E402
from model_shapes import TINY_CONVNEXT, TINY_LLAMA  # noqa: E402

FIXTURE_LLM = REPO_ROOT / "modeling_tests" / "fixtures" / "original-tiny" / "llm"
ORIGINAL_VOCAB = 32000
ORIGINAL_SHARD_BYTES = 10_000_000_000  # transformers 4.39's default max_shard_size when the release was saved
RESOLUTION = 1536


def original_name(name: str) -> str:
    """Converted parameter name -> name in the original LLM or vision folder."""
    for prefix, replacement in (
        ("model.vision_tower.", ""),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.language_model.", "model."),
    ):
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


def write_tokenizer(folder: Path) -> None:
    """The fixture's sentencepiece model padded with dummy pieces to Vicuna's 32000 entries, plus its configs."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString((FIXTURE_LLM / "tokenizer.model").read_bytes())
    for index in range(ORIGINAL_VOCAB - len(model.pieces)):
        model.pieces.add(piece=f"▁synthetic{index:05d}", score=-1000.0 - index)
    (folder / "tokenizer.model").write_bytes(model.SerializeToString())
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copy(FIXTURE_LLM / name, folder / name)


def write_configs(llm: Path, vision: Path, config: ConvLlavaConfig) -> None:
    text = config.text_config
    llm_config = json.loads((FIXTURE_LLM / "config.json").read_text())
    llm_config.update(
        hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads, num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=4096, vocab_size=ORIGINAL_VOCAB, mm_hidden_size=config.vision_config.hidden_sizes[-1],
        mm_vision_tower="ConvLLaVA/ConvLLaVA-ConvNeXt-1536", torch_dtype="bfloat16",
    )  # fmt: skip
    (llm / "config.json").write_text(json.dumps(llm_config, indent=2))
    vision_config = config.vision_config.to_dict()
    vision_config.pop("dtype", None)
    (vision / "config.json").write_text(json.dumps(vision_config, indent=2))
    (vision / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(RESOLUTION), indent=2))


def random_bf16(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02)


def write_weights(llm: Path, vision: Path, config: ConvLlavaConfig) -> int:
    """Random bf16 weights in the original layout, one shard in memory at a time; returns their total bytes."""
    shapes = {  # the original checkpoints lack the pooling layernorm ConvLLaVA never applies
        original_name(name): shape
        for name, shape in expected_parameters(config).items()
        if name not in POOLING_LAYERNORM
    }
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        shapes[name] = (ORIGINAL_VOCAB, shapes[name][1])
    vision_names = [name for name in shapes if name.startswith(("embeddings.", "encoder."))]
    torch.save({name: random_bf16(shapes[name]) for name in vision_names}, vision / "pytorch_model.bin")
    llm_names = [name for name in shapes if name not in vision_names]
    shards, size = [[]], 0
    for name in llm_names:
        nbytes = torch.Size(shapes[name]).numel() * 2
        if shards[-1] and size + nbytes > ORIGINAL_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for index, names in enumerate(shards, start=1):
        file_name = f"pytorch_model-{index:05d}-of-{len(shards):05d}.bin"
        torch.save({name: random_bf16(shapes[name]) for name in names}, llm / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
    llm_bytes = sum(torch.Size(shapes[name]).numel() * 2 for name in llm_names)
    index = {"metadata": {"total_size": llm_bytes}, "weight_map": weight_map}
    (llm / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return sum(torch.Size(shape).numel() * 2 for shape in shapes.values())


def sample_memory(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Track the child's peak RssAnon / RssFile (from /proc) every 50 ms."""
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        fields = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in status.splitlines()
            if line.startswith(("RssAnon", "RssFile"))
        }
        for key, value in fields.items():
            peaks[key] = max(peaks.get(key, 0), value)
        time.sleep(0.05)


def run_converter(llm: Path, vision: Path, output: Path, dtype: str) -> dict:
    command = [
        sys.executable, str(REPO_ROOT / "conversion" / "convert_convllava_to_hf.py"),
        "--llm", str(llm), "--vision", str(vision), "--output", str(output), "--dtype", dtype,
    ]  # fmt: skip
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    peaks, stop = {}, threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(child.pid, peaks, stop))
    sampler.start()
    returncode = child.wait()
    stop.set()
    sampler.join()
    if returncode:
        raise SystemExit(f"converter failed with exit status {returncode}")
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "peak_rss_anon_bytes": peaks.get("RssAnon", 0),
        "peak_rss_file_bytes": peaks.get("RssFile", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()), help="Where to write (~30 GB for 7B)."
    )
    parser.add_argument("--layers", type=int, default=None, help="LLM layers (default 32, the real 7B model; tiny 2).")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (the vocabulary stays 32000; smoke test)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="bfloat16",
        help="Output dtype. Default bfloat16, that of the synthetic weights: nothing is cast (float16 casts them all).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the synthetic checkpoint and the converted folder.")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "conversion_memory.json")
    args = parser.parse_args()

    text_config = {"model_type": "llama", "vocab_size": ORIGINAL_VOCAB + 64}
    if args.tiny:
        text_config |= {key: TINY_LLAMA[key] for key in TINY_LLAMA if key != "vocab_size"}
    text_config["num_hidden_layers"] = args.layers or (2 if args.tiny else 32)
    vision = {"vision_config": dict(TINY_CONVNEXT)} if args.tiny else {}
    config = ConvLlavaConfig(text_config=text_config, **vision)
    root = Path(tempfile.mkdtemp(prefix="convllava-memory-", dir=args.workdir))
    try:
        llm, vision, output = root / "llm", root / "vision", root / "converted"
        llm.mkdir()
        vision.mkdir()
        start = time.perf_counter()
        write_configs(llm, vision, config)
        write_tokenizer(llm)
        input_bytes = write_weights(llm, vision, config)
        generation_seconds = round(time.perf_counter() - start, 1)
        result = run_converter(llm, vision, output, args.dtype)
        output_bytes = sum(path.stat().st_size for path in output.glob("*.safetensors"))
        result.update(
            output_dtype=args.dtype,
            llm_layers=config.text_config.num_hidden_layers,
            tiny=args.tiny,
            input_bytes=input_bytes,
            input_files=sorted(path.name for path in [*llm.glob("*.bin"), *vision.glob("*.bin")]),
            largest_input_shard_bytes=max(path.stat().st_size for path in [*llm.glob("*.bin"), *vision.glob("*.bin")]),
            output_safetensors_bytes=output_bytes,
            peak_rss_over_output=round(result["peak_rss_bytes"] / output_bytes, 3),
            generation_seconds=generation_seconds,
            machine={"cpus": psutil.cpu_count(), "ram_bytes": psutil.virtual_memory().total},
        )
        write_json(result, args.output)
    finally:
        if not args.keep:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
