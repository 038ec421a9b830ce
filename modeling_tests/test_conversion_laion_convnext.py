"""LAION CLIP ConvNeXt (timm / open_clip names) -> five-stage ConvLLaVA vision tower with a fresh fifth stage."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ConvNextConfig, ConvNextModel

from convllava_hf.conversion import ConversionError, convert_checkpoint
from convllava_hf.conversion.laion_convnext import convert_laion_convnext, main, map_trunk_keys
from tiny_models import FIXTURE_DIR

DEPTHS, DIMS = (1, 1, 2, 1), (16, 24, 32, 48)


def timm_shaped_trunk(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with timm ConvNeXt names and shapes (no timm needed), stem patch 4."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    state = {
        "stem.0.weight": randn(DIMS[0], 3, 4, 4),
        "stem.0.bias": randn(DIMS[0]),
        "stem.1.weight": 1 + randn(DIMS[0]),
        "stem.1.bias": randn(DIMS[0]),
    }
    for stage, (depth, dim) in enumerate(zip(DEPTHS, DIMS)):
        if stage:
            prefix = f"stages.{stage}.downsample"
            state |= {f"{prefix}.0.weight": 1 + randn(DIMS[stage - 1]), f"{prefix}.0.bias": randn(DIMS[stage - 1])}
            state |= {f"{prefix}.1.weight": randn(dim, DIMS[stage - 1], 2, 2), f"{prefix}.1.bias": randn(dim)}
        for block in range(depth):
            prefix = f"stages.{stage}.blocks.{block}"
            state |= {
                f"{prefix}.gamma": 0.5 + randn(dim),
                f"{prefix}.conv_dw.weight": randn(dim, 1, 7, 7),
                f"{prefix}.conv_dw.bias": randn(dim),
            }
            state |= {f"{prefix}.norm.weight": 1 + randn(dim), f"{prefix}.norm.bias": randn(dim)}
            state |= {f"{prefix}.mlp.fc1.weight": randn(4 * dim, dim), f"{prefix}.mlp.fc1.bias": randn(4 * dim)}
            state |= {f"{prefix}.mlp.fc2.weight": randn(dim, 4 * dim), f"{prefix}.mlp.fc2.bias": randn(dim)}
    return state | {"head.norm.weight": torch.ones(DIMS[-1]), "head.norm.bias": torch.zeros(DIMS[-1])}


def open_clip_checkpoint(trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk inside an open_clip CLIP state dict, next to a projection head and a text tower."""
    return {f"visual.trunk.{name}": tensor for name, tensor in trunk.items()} | {
        "visual.head.proj.weight": torch.zeros(8, DIMS[-1]),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8),
        "logit_scale": torch.tensor(4.6),
    }


def test_timm_and_open_clip_names_map_onto_the_vision_tower_stages_1_to_4():
    four_stages = ConvNextConfig(num_stages=4, depths=list(DEPTHS), hidden_sizes=list(DIMS))
    tower_names = {name for name in ConvNextModel(four_stages).state_dict() if not name.startswith("layernorm.")}
    for state in (timm_shaped_trunk(), open_clip_checkpoint(timm_shaped_trunk())):
        mapping = map_trunk_keys(list(state))
        assert set(mapping.values()) == tower_names
    mapping = map_trunk_keys(list(open_clip_checkpoint(timm_shaped_trunk())))
    assert mapping["visual.trunk.stages.2.blocks.1.mlp.fc2.bias"] == "encoder.stages.2.layers.1.pwconv2.bias"
    assert mapping["visual.trunk.stages.3.downsample.1.weight"] == "encoder.stages.3.downsampling_layer.1.weight"
    assert mapping["visual.trunk.stages.0.blocks.0.gamma"] == "encoder.stages.0.layers.0.layer_scale_parameter"
    assert mapping["visual.trunk.stem.1.bias"] == "embeddings.layernorm.bias"


def test_unknown_trunk_tensor_is_refused_by_name():
    names = [*timm_shaped_trunk(), "stages.0.blocks.0.grn.weight"]
    with pytest.raises(ConversionError, match=re.escape("stages.0.blocks.0.grn.weight")):
        map_trunk_keys(names)


def test_converted_tower_has_the_trunk_as_stages_1_to_4_and_a_fresh_fifth_stage(tmp_path):
    trunk = timm_shaped_trunk()
    save_file(open_clip_checkpoint(trunk), tmp_path / "open_clip_model.safetensors")
    output = convert_laion_convnext(str(tmp_path), tmp_path / "tower", resolution=768, stage5_depth=2, stage5_width=96)
    config = json.loads((output / "config.json").read_text())
    assert (config["num_stages"], config["depths"], config["hidden_sizes"], config["image_size"]) == (
        5,
        [1, 1, 2, 1, 2],
        [*DIMS, 96],
        768,
    )
    preprocessor = json.loads((output / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 768, "width": 768} and preprocessor["size"] == {"shortest_edge": 768}
    weights = load_file(output / "model.safetensors")
    mapping = map_trunk_keys(list(trunk))
    assert all(torch.equal(weights[new], trunk[old]) for old, new in mapping.items())
    stage5 = {name: tensor for name, tensor in weights.items() if name.startswith("encoder.stages.4.")}
    assert stage5["encoder.stages.4.downsampling_layer.1.weight"].shape == (96, 48, 2, 2)
    assert torch.equal(stage5["encoder.stages.4.layers.1.layer_scale_parameter"], torch.full((96,), 1e-6))
    pooling = {name: tensor for name, tensor in weights.items() if name.startswith("layernorm.")}
    assert len(weights) == len(mapping) + len(stage5) + len(pooling)
    assert torch.equal(pooling["layernorm.weight"], torch.ones(96)) and torch.equal(
        pooling["layernorm.bias"], torch.zeros(96)
    )


def test_fifth_stage_initialisation_is_seeded(tmp_path):
    torch.save(timm_shaped_trunk(), tmp_path / "pytorch_model.bin")
    first, second, third = (
        load_file(
            convert_laion_convnext(str(tmp_path / "pytorch_model.bin"), tmp_path / name, 256, 1, 64, seed)
            / "model.safetensors"
        )
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )
    name = "encoder.stages.4.layers.0.pwconv1.weight"
    assert torch.equal(first[name], second[name]) and not torch.equal(first[name], third[name])


def test_tower_with_fixture_sized_fifth_stage_converts_with_the_original_llm(tmp_path):
    torch.save(timm_shaped_trunk(), tmp_path / "pytorch_model.bin")
    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "pytorch_model.bin"),
                "--output",
                str(tmp_path / "tower"),
                "--resolution",
                "256",
                "--stage5-depth",
                "1",
                "--stage5-width",
                "64",
            ]
        )
        == 0
    )
    output = convert_checkpoint(str(FIXTURE_DIR / "llm"), tmp_path / "model", str(tmp_path / "tower"))
    assert json.loads((output / "config.json").read_text())["vision_config"]["hidden_sizes"] == [*DIMS, 64]


def test_bad_resolution_and_missing_checkpoint_are_refused(tmp_path):
    with pytest.raises(ConversionError, match="multiple of 64"):
        convert_laion_convnext(str(tmp_path), tmp_path / "tower", resolution=500)
    with pytest.raises(ConversionError, match="No ConvNeXt checkpoint"):
        convert_laion_convnext(str(tmp_path), tmp_path / "tower")


def test_stages_1_to_4_give_timms_own_feature_map(tmp_path):
    timm_convnext = pytest.importorskip("timm.models.convnext")
    torch.manual_seed(0)
    reference = timm_convnext.ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=0).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            parameter.copy_(
                0.5 + 0.5 * torch.rand_like(parameter)
                if name.endswith(("gamma", "norm.weight"))
                else 0.1 * torch.randn_like(parameter)
            )
    save_file(open_clip_checkpoint(reference.state_dict()), tmp_path / "open_clip_model.safetensors")
    tower = ConvNextModel.from_pretrained(convert_laion_convnext(str(tmp_path), tmp_path / "tower", 256, 1, 64)).eval()
    images = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        expected = reference.forward_features(images)
        ours = tower(images, output_hidden_states=True).hidden_states[4]
    assert ours.shape == expected.shape == (2, 48, 4, 6)
    assert (ours - expected).abs().max().item() <= 1e-5
