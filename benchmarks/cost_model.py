"""
Benchmark 1, machine-independent cost model: visual tokens, vision FLOPs and 7B LLM prefill FLOPs (a 64-token
question after the image) of ConvLLaVA-768/1024/1536 vs LLaVA-1.5- and LLaVA-NeXT-shaped models, plus the weight
memory of ConvLLaVA-7B in bf16 / 8-bit / 4-bit. Every model is a transformers class built on the meta device and
counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; 2 FLOPs per multiply-add;
norms and activations are not counted; causal attention is counted as full).

    python benchmarks/cost_model.py            # -> benchmarks/results/cost_model.json and cost_model.png
    python benchmarks/cost_model.py --tiny --output-dir /tmp/cost   # the same code on tiny widths and depths (smoke)
"""

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, LlamaForCausalLM

from _common import RESULTS_DIR, write_json
from model_shapes import QUESTION_TOKENS, all_configs, convllava_config, image_inputs

#: bitsandbytes nf4 with double quantization: 4 bits + an 8-bit absmax per 64 weights + an fp32 per 256 absmaxes.
NF4_DOUBLE_QUANT_BITS = 4 + 8 / 64 + 32 / (64 * 256)


def count_flops(function, *args, **kwargs) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        output = function(*args, **kwargs)
    return counter.get_total_flops(), output


def vision_cost(config) -> dict:
    """Visual tokens and FLOPs of the vision tower + projector on one image, from the model's own get_image_features."""
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    flops, output = count_flops(model.get_image_features, **image_inputs(config, device="meta"))
    features = output.pooler_output
    features = [features] if isinstance(features, torch.Tensor) else features
    tokens = sum(feature.reshape(-1, feature.shape[-1]).shape[0] for feature in features)
    vision_params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("language_model."))
    return {"visual_tokens": tokens, "vision_gflops": flops / 1e9, "vision_and_projector_params_m": vision_params / 1e6}


def prefill_gflops(language_model: LlamaForCausalLM, sequence_length: int) -> float:
    """FLOPs of one prefill over `sequence_length` embeddings, logits for the last position only (as generate does)."""
    hidden = language_model.config.hidden_size
    embeddings = torch.empty(1, sequence_length, hidden, device="meta")
    flops, _ = count_flops(language_model, inputs_embeds=embeddings, logits_to_keep=1)
    return flops / 1e9


def kv_cache_mib(text_config, tokens: int, bytes_per_value: int = 2) -> float:
    head_dim = text_config.hidden_size // text_config.num_attention_heads
    values = 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim * tokens
    return values * bytes_per_value / 2**20


def weight_memory(tiny: bool = False) -> dict:
    """ConvLLaVA-7B weight memory: all in bf16, or the LLM's decoder linears in int8 / nf4 and the rest in bf16."""
    with torch.device("meta"):
        model = AutoModel.from_config(convllava_config(1536, tiny))
    decoder_linears = [m for m in model.language_model.modules() if type(m) is nn.Linear]
    quantizable = sum(m.weight.numel() for m in decoder_linears)
    int8_row_scales = sum(m.out_features for m in decoder_linears)
    parts = {
        "vision_tower": sum(p.numel() for p in model.vision_tower.parameters()),
        "projector": sum(p.numel() for p in model.multi_modal_projector.parameters()),
        "llm_decoder_linears": quantizable,
        "llm_embeddings_and_norms": sum(p.numel() for p in model.language_model.parameters()) - quantizable,
        "lm_head": model.config.text_config.vocab_size * model.config.text_config.hidden_size,
    }
    total = sum(parts.values())
    gib = 2**30
    return {
        "params_m": {name: count / 1e6 for name, count in parts.items()},
        "total_params_b": total / 1e9,
        "bf16_gib": 2 * total / gib,
        "int8_gib": (2 * (total - quantizable) + quantizable + 4 * int8_row_scales) / gib,
        "nf4_double_quant_gib": (2 * (total - quantizable) + quantizable * NF4_DOUBLE_QUANT_BITS / 8) / gib,
    }


def plot(rows: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no {path.name}: matplotlib is not installed (pip install -e \".[benchmarks]\")")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    vision = [rows[n]["vision_gflops"] / 1e3 for n in names]
    llm = [rows[n]["llm_prefill_gflops"] / 1e3 for n in names]
    figure, axis = plt.subplots(figsize=(8, 3.8))
    axis.barh(names, vision, label="vision tower + projector", color="#4c72b0")
    axis.barh(names, llm, left=vision, label=f"7B LLM prefill (+{QUESTION_TOKENS}-token question)", color="#dd8452")
    for index, name in enumerate(names):
        total = vision[index] + llm[index]
        label = f"{rows[name]['visual_tokens']} tokens, {total:.1f} TFLOPs"
        axis.text(total + 0.4, index, label, va="center", fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("TFLOPs per image + question (prefill)")
    axis.set_xlim(0, 1.45 * max(v + t for v, t in zip(vision, llm)))
    axis.legend(loc="center right", fontsize=8)
    axis.set_title("Time-to-first-token compute: ConvLLaVA vs ViT-based LLaVA (FlopCounterMode)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tiny", action="store_true", help="tiny widths and depths (smoke test; figures meaningless)")
    args = parser.parse_args()

    configs = all_configs(args.tiny)
    with torch.device("meta"):
        language_model = LlamaForCausalLM(next(iter(configs.values())).text_config)
    rows = {}
    for name, config in configs.items():
        row = vision_cost(config)
        row["llm_prefill_gflops"] = prefill_gflops(language_model, row["visual_tokens"] + QUESTION_TOKENS)
        row["total_gflops"] = row["vision_gflops"] + row["llm_prefill_gflops"]
        row["vision_share"] = row["vision_gflops"] / row["total_gflops"]
        row["prompt_kv_cache_mib_bf16"] = kv_cache_mib(config.text_config, row["visual_tokens"] + QUESTION_TOKENS)
        rows[name] = row
    for reference in ("LLaVA-1.5 (ViT-L/14-336)", "LLaVA-NeXT (anyres 672)"):
        for row in rows.values():
            row[f"total_vs_{reference.split(' ')[0]}"] = row["total_gflops"] / rows[reference]["total_gflops"]

    print(f"{'model':26} {'tokens':>6} {'vision GF':>10} {'LLM GF':>10} {'total GF':>10} {'vs 1.5':>7} {'vs NeXT':>7}")
    for name, row in rows.items():
        print(
            f"{name:26} {row['visual_tokens']:6d} {row['vision_gflops']:10.0f} {row['llm_prefill_gflops']:10.0f} "
            f"{row['total_gflops']:10.0f} {row['total_vs_LLaVA-1.5']:7.2f} {row['total_vs_LLaVA-NeXT']:7.2f}"
        )
    memory = weight_memory(args.tiny)
    print({key: value for key, value in memory.items() if key != "params_m"})
    payload = {
        "method": "torch.utils.flop_counter.FlopCounterMode on meta-device transformers models; 1 image, batch 1",
        "tiny": args.tiny,
        "question_tokens": QUESTION_TOKENS,
        "models": rows,
        "convllava_7b_weight_memory": memory,
    }
    write_json(payload, args.output_dir / "cost_model.json")
    plot(rows, args.output_dir / "cost_model.png")


if __name__ == "__main__":
    main()
