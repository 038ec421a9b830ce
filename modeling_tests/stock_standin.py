"""TEMPORARY stand-in for main's `convert_original_tiny(output, layout="fast_vlm")`; deleted when it lands."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from converted_tiny import convert_original_tiny


def convert_stock_tiny(output: Path) -> Path:
    convert_original_tiny(output)
    for path in output.glob("*.py"):
        path.unlink()
    config = json.loads((output / "config.json").read_text())
    config.pop("auto_map")
    config.pop("convllava_code_version")
    config.pop("image_resolution")
    config.update(model_type="fast_vlm", architectures=["FastVlmForConditionalGeneration"])
    vision = config["vision_config"]
    vision["hidden_size"] = vision["hidden_sizes"][-1]
    config["attn_implementation"] = "eager"  # guess of how main declares it
    (output / "config.json").write_text(json.dumps(config, indent=2))
    processor = json.loads((output / "processor_config.json").read_text())
    image = processor["image_processor"]
    for key in ("auto_map", "image_aspect_ratio", "resolution"):
        image.pop(key)
    image["image_processor_type"] = "LlavaImageProcessorPil"
    processor = {
        "image_processor": image, "image_token": "<image>", "patch_size": 64, "num_additional_image_tokens": 0,
        "vision_feature_select_strategy": "full", "processor_class": "LlavaProcessor",
    }
    (output / "processor_config.json").write_text(json.dumps(processor, indent=2))
    tokenizer_config = json.loads((output / "tokenizer_config.json").read_text())
    tokenizer_config.pop("auto_map", None)
    tokenizer_config.pop("processor_class", None)
    (output / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    weights = load_file(output / "model.safetensors")
    width = vision["hidden_size"]
    weights["model.vision_tower.layernorm.weight"] = torch.ones(width)
    weights["model.vision_tower.layernorm.bias"] = torch.zeros(width)
    save_file(weights, output / "model.safetensors", metadata={"format": "pt"})
    return output
