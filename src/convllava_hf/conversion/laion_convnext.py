"""
`convert_laion_convnext`: a LAION CLIP ConvNeXt trunk (timm / open_clip names) -> a five-stage ConvLLaVA vision-tower
folder whose fifth stage is freshly initialised, the starting point for training ConvLLaVA from scratch.
"""

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import ConvNextConfig, ConvNextModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ..configuration_conv_llava import check_resolution
from .checkpoint_reader import CheckpointReader
from .errors import ConversionError
from .key_mapping import map_keys
from .sources import resolve_source
from .staged_output import check_output, recover_interrupted_runs, staged_output

logger = logging.getLogger(__name__)

#: Prefixes under which checkpoints store the timm trunk: open_clip's full model, its visual tower, plain timm.
TRUNK_PREFIXES = ("visual.trunk.", "trunk.", "")

#: timm ConvNeXt name -> transformers ConvNext name (stage and block indices carry over).
TIMM_KEY_RULES = (
    (r"stem\.0\.(weight|bias)", r"embeddings.patch_embeddings.\1"),
    (r"stem\.1\.(weight|bias)", r"embeddings.layernorm.\1"),
    (r"stages\.(\d+)\.downsample\.([01])\.(weight|bias)", r"encoder.stages.\1.downsampling_layer.\2.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)", r"encoder.stages.\1.layers.\2.dwconv.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)", r"encoder.stages.\1.layers.\2.layernorm.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.stages.\1.layers.\2.pwconv\3.\4"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
)

#: Trunk parts ConvLLaVA does not use: timm's classifier head (its final norm included) and the pre-head norm.
UNUSED_TRUNK_KEYS = (r"head\..+", r"norm_pre\..+")

#: Checkpoint file names looked for in a folder, most preferred first.
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


def trunk_prefix(names: Sequence[str]) -> str:
    """The prefix of the ConvNeXt trunk's tensors; everything else (e.g. open_clip's text tower) is ignored."""
    for prefix in TRUNK_PREFIXES:
        if any(name.startswith(f"{prefix}stem.0.") for name in names):
            return prefix
    raise ConversionError(
        "No ConvNeXt trunk found: expected a 'stem.0.weight' tensor, optionally under 'visual.trunk.' or 'trunk.'."
    )


def map_trunk_keys(names: Sequence[str]) -> dict[str, str]:
    """Checkpoint name -> vision-tower name for the trunk's tensors; refuses unknown trunk tensors by name."""
    prefix = trunk_prefix(names)
    trunk = [name[len(prefix) :] for name in names if name.startswith(prefix)]
    mapping = map_keys(trunk, TIMM_KEY_RULES, UNUSED_TRUNK_KEYS, "ConvNeXt trunk")
    return {prefix + name: target for name, target in mapping.items()}


def trunk_shape(reader: CheckpointReader, mapping: dict[str, str]) -> tuple[list[int], list[int], int]:
    """(depths, widths, patch size) of the 4-stage trunk, read off the tensor shapes."""
    shapes = {new: reader.specs[old].shape for old, new in mapping.items()}
    stem = shapes["embeddings.patch_embeddings.weight"]
    blocks = {
        tuple(int(i) for i in re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.", name).groups())
        for name in shapes
        if ".layers." in name
    }
    num_stages = 1 + max(stage for stage, _ in blocks)
    if num_stages != 4:
        raise ConversionError(f"Expected the 4 stages of a ConvNeXt trunk, found {num_stages}.")
    depths = [1 + max(block for stage, block in blocks if stage == s) for s in range(4)]
    widths = [shapes[f"encoder.stages.{s}.layers.0.dwconv.weight"][0] for s in range(4)]
    kernels = {shapes[f"encoder.stages.{s}.layers.{b}.dwconv.weight"][-2:] for s, b in blocks}
    if kernels != {(7, 7)} or stem[-1] != stem[-2]:
        raise ConversionError(f"Expected 7x7 depthwise convolutions and a square stem, got {kernels} and {list(stem)}.")
    return depths, widths, stem[-1]


def load_trunk(reader: CheckpointReader, mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    """The trunk's tensors under vision-tower names (timm's 1x1-conv MLP weights flattened to linear weights)."""
    state = {}
    for old, new in mapping.items():
        tensor = reader.get(old)
        state[new] = tensor.flatten(1) if "pwconv" in new and tensor.ndim == 4 else tensor.clone()
    reader.close()
    return state


def build_vision_tower(
    checkpoint: Path | Sequence[Path], stage5_depth: int = 6, stage5_width: int = 3072, seed: int = 0
) -> ConvNextModel:
    """
    A five-stage vision tower: stem and stages 1-4 from the LAION trunk, stage 5 (`stage5_depth` blocks of width
    `stage5_width`, stride-2 downsampling in front) initialised like any transformers ConvNeXt (seeded by `seed`).
    """
    if stage5_depth < 1 or stage5_width < 1:
        raise ConversionError(f"The fifth stage needs positive depth and width, got {stage5_depth} and {stage5_width}.")
    reader = CheckpointReader([checkpoint] if isinstance(checkpoint, Path) else checkpoint)
    mapping = map_trunk_keys(list(reader.specs))
    depths, widths, patch_size = trunk_shape(reader, mapping)
    config = ConvNextConfig(
        num_stages=5, depths=[*depths, stage5_depth], hidden_sizes=[*widths, stage5_width], patch_size=patch_size,
        hidden_act="gelu", layer_scale_init_value=1e-6, drop_path_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    tower = ConvNextModel(config)
    missing, unexpected = tower.load_state_dict(load_trunk(reader, mapping), strict=False)
    not_in_stage5 = [name for name in missing if not name.startswith(("encoder.stages.4.", "layernorm."))]
    if not_in_stage5 or unexpected:
        raise ConversionError(f"The trunk does not fill stages 1-4: missing {not_in_stage5}, unexpected {unexpected}.")
    return tower.eval()


def clip_preprocessor_config(resolution: int) -> dict:
    """The `preprocessor_config.json` of the original vision-tower folders (a CLIPImageProcessor) at `resolution`."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": resolution},
        "resample": int(PILImageResampling.BICUBIC),
        "do_center_crop": True,
        "crop_size": {"height": resolution, "width": resolution},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    }


def find_checkpoint(source: Path) -> Path:
    """The checkpoint file itself, or the one to use inside a folder (open_clip / timm file names)."""
    if source.is_file():
        return source
    for name in CHECKPOINT_NAMES:
        if (source / name).is_file():
            return source / name
    raise ConversionError(f"No ConvNeXt checkpoint in {source}: expected one of {', '.join(CHECKPOINT_NAMES)}.")


def convert_laion_convnext(
    source: str, output: Path, resolution: int = 1536, stage5_depth: int = 6, stage5_width: int = 3072,
    seed: int = 0, force: bool = False,
) -> Path:  # fmt: skip
    """
    Write a vision-tower folder like the original ConvLLaVA-ConvNeXt-* ones (ConvNext `config.json`,
    `preprocessor_config.json` of a `CLIPImageProcessor` at `resolution`, float32 `model.safetensors` of transformers'
    `ConvNextModel`, whose pooling LayerNorm ConvLLaVA never applies), written in a temp folder and moved into place
    when complete.
    """
    check_resolution(resolution, "--resolution", ConversionError)
    output = Path(output)
    recover_interrupted_runs(output)
    check_output(output, force)
    path = Path(source).expanduser()
    checkpoint = find_checkpoint(path if path.exists() else resolve_source(source, "--checkpoint"))
    tower = build_vision_tower(checkpoint, stage5_depth, stage5_width, seed)
    tower.config.image_size = resolution
    with staged_output(output, force) as staging:
        tower.save_pretrained(staging)
        (staging / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(resolution), indent=2))
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for input the converter refuses)."""
    parser = argparse.ArgumentParser(prog="convllava-convert-laion-convnext", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="timm / open_clip checkpoint file, folder or Hub id.")
    parser.add_argument("--output", required=True, type=Path, help="Vision-tower folder to write.")
    parser.add_argument("--resolution", type=int, default=1536, help="Training resolution (multiple of 64).")
    parser.add_argument("--stage5-depth", type=int, default=6, help="Blocks in the new fifth stage (default 6).")
    parser.add_argument("--stage5-width", type=int, default=3072, help="Channels of the fifth stage (default 3072).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fifth stage's initialisation.")
    parser.add_argument("--force", action="store_true", help="Replace the contents of a non-empty --output.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = convert_laion_convnext(
            args.checkpoint, args.output, args.resolution, args.stage5_depth, args.stage5_width, args.seed, args.force
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Five-stage vision tower written to {output}")
    return 0
