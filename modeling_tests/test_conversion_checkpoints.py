"""Converter input and output handling: weight formats, key checks, embedding growth, sharding, safe output folders."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from convllava_hf.conversion import ConversionError, convert_checkpoint, safetensors_writer
from convllava_hf.conversion.checkpoint_reader import load_weights
from convllava_hf.conversion.weight_plan import POOLING_LAYERNORM
from tiny_models import FIXTURE_DIR

LLM_SHARDS = sorted((FIXTURE_DIR / "llm").glob("pytorch_model-*.bin"))
NON_WEIGHT_FILES = [
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "tokenizer_config.json",
]


def read_state(file: Path) -> dict[str, torch.Tensor]:
    """A state dict in memory (not memory-mapped, so its file can be rewritten)."""
    return {name: tensor.clone() for name, tensor in load_weights(file).items()}


def original_llm_state() -> dict[str, torch.Tensor]:
    return {name: tensor for shard in LLM_SHARDS for name, tensor in read_state(shard).items()}


def write_llm(folder: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    """An LLM folder with the fixture's configs and `state` saved as `fmt` (bin / safetensors, single / sharded)."""
    folder.mkdir(parents=True)
    for name in NON_WEIGHT_FILES:
        shutil.copy(FIXTURE_DIR / "llm" / name, folder / name)
    kind, layout = fmt.split("-")
    suffix, stem = (".bin", "pytorch_model") if kind == "bin" else (".safetensors", "model")
    save = torch.save if kind == "bin" else save_file
    if layout == "single":
        save(state, folder / f"{stem}{suffix}")
        return folder
    names = list(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for index, half in enumerate(halves, start=1):
        file_name = f"{stem}-{index:05d}-of-00002{suffix}"
        save({name: state[name] for name in half}, folder / file_name)
        weight_map.update(dict.fromkeys(half, file_name))
    (folder / f"{stem}{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def converted_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def convert(llm: Path, output: Path, **kwargs) -> Path:
    """The package layout, which holds exactly the converted tensors (test_stock_layout.py tests the stock one's)."""
    kwargs.setdefault("layout", "conv_llava")
    return convert_checkpoint(str(llm), output, str(kwargs.pop("vision", FIXTURE_DIR / "vision")), **kwargs)


@pytest.fixture(scope="module")
def reference_conversion(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The fixture as shipped (two .bin shards + index) converted to float32."""
    return converted_tensors(convert(FIXTURE_DIR / "llm", tmp_path_factory.mktemp("reference") / "out"))


@pytest.mark.parametrize("fmt", ["bin-single", "safetensors-single", "safetensors-sharded", "bin-sharded"])
def test_every_weight_format_converts_to_identical_tensors(tmp_path, reference_conversion, fmt):
    llm = write_llm(tmp_path / "llm", original_llm_state(), fmt)
    tensors = converted_tensors(convert(llm, tmp_path / "out"))
    assert tensors.keys() == reference_conversion.keys()
    assert all(torch.equal(tensors[name], reference_conversion[name]) for name in tensors)


def test_weights_are_copied_unchanged_and_new_vocab_rows_are_the_mean(reference_conversion):
    original = original_llm_state()
    for converted_name, original_name in (
        ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ):
        weight = reference_conversion[converted_name]
        assert weight.shape == (832, 64)
        assert torch.equal(weight[:800], original[original_name])
        assert torch.allclose(weight[800:], original[original_name].mean(0).expand(32, -1), atol=0, rtol=0)
    assert torch.equal(
        reference_conversion["model.multi_modal_projector.linear_2.bias"], original["model.mm_projector.2.bias"]
    )
    vision = load_weights(FIXTURE_DIR / "vision" / "pytorch_model.bin")
    assert all(
        torch.equal(reference_conversion[f"model.vision_tower.{name}"], tensor) for name, tensor in vision.items()
    )
    pooling = {name: reference_conversion[name] for name in POOLING_LAYERNORM}  # never applied: identity weights
    assert torch.equal(pooling[POOLING_LAYERNORM[0]], torch.ones(64)) and torch.equal(
        pooling[POOLING_LAYERNORM[1]], torch.zeros(64)
    )
    assert len(reference_conversion) == len(original) + len(vision) + len(pooling)


def test_small_max_shard_size_gives_shards_and_an_index_that_cover_every_tensor(tmp_path, reference_conversion):
    output = convert(FIXTURE_DIR / "llm", tmp_path / "out", max_shard_size="300KB")
    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = sorted(output.glob("model-*-of-*.safetensors"))
    total_size = sum(t.numel() * t.element_size() for t in reference_conversion.values())
    assert len(shards) >= -(-total_size // 300_000) and not (output / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert index["metadata"]["total_size"] == total_size
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            assert all(index["weight_map"][name] == shard.name for name in handle.keys())
            assert sum(handle.get_tensor(name).nbytes for name in handle.keys()) <= 300_000
    tensors = converted_tensors(output)
    assert all(torch.equal(tensors[name], reference_conversion[name]) for name in reference_conversion)


def test_bfloat16_output_casts_every_tensor(tmp_path, reference_conversion):
    output = convert(FIXTURE_DIR / "llm", tmp_path / "out", dtype="bfloat16")
    tensors = converted_tensors(output)
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert all(
        torch.equal(tensors[name], reference_conversion[name].bfloat16())
        for name in tensors
        if "embed" not in name and "lm_head" not in name
    )
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda state: state.update({"model.layers.0.self_attn.extra.weight": torch.zeros(2)}),
            "model.layers.0.self_attn.extra.weight",
        ),
        (lambda state: state.pop("model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj.weight"),
        (lambda state: state.update({"model.norm.weight": torch.ones(65)}), "model.norm.weight"),
    ],
    ids=["unknown", "missing", "misshapen"],
)
def test_unknown_missing_or_misshapen_tensors_are_refused_by_name_and_nothing_is_written(tmp_path, change, named):
    state = original_llm_state()
    change(state)
    llm = write_llm(tmp_path / "llm", state, "safetensors-single")
    with pytest.raises(ConversionError, match=named.replace(".", r"\.")):
        convert(llm, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_vision_tensor_is_refused_by_name(tmp_path):
    vision = tmp_path / "vision"
    shutil.copytree(FIXTURE_DIR / "vision", vision)
    state = read_state(vision / "pytorch_model.bin")
    torch.save({**state, "pooler.dense.weight": torch.zeros(2)}, vision / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"pooler\.dense\.weight"):
        convert(FIXTURE_DIR / "llm", tmp_path / "out", vision=vision)


def test_final_vision_layernorm_the_original_never_applies_is_dropped(tmp_path, reference_conversion):
    vision = tmp_path / "vision"
    shutil.copytree(FIXTURE_DIR / "vision", vision)
    state = read_state(vision / "pytorch_model.bin")
    torch.save(
        {**state, "layernorm.weight": torch.ones(64), "layernorm.bias": torch.zeros(64)}, vision / "pytorch_model.bin"
    )
    assert (
        converted_tensors(convert(FIXTURE_DIR / "llm", tmp_path / "out", vision=vision)).keys()
        == reference_conversion.keys()
    )


def test_pickled_objects_are_never_unpickled(tmp_path):
    state = original_llm_state()
    llm = write_llm(tmp_path / "llm", state, "bin-single")
    torch.save({**state, "payload": Path("/")}, llm / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights-only"):
        convert(llm, tmp_path / "out")


def test_index_that_disagrees_with_its_shards_is_refused(tmp_path):
    llm = write_llm(tmp_path / "llm", original_llm_state(), "safetensors-sharded")
    index_path = llm / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="does not match its shards"):
        convert(llm, tmp_path / "out")


def test_non_empty_output_is_refused_without_force_and_replaced_with_force(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="--force"):
        convert(FIXTURE_DIR / "llm", output)
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    convert(FIXTURE_DIR / "llm", output, force=True)
    assert not (output / "keep.txt").exists() and (output / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_empty_output_folder_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    assert (convert(FIXTURE_DIR / "llm", tmp_path / "out") / "model.safetensors").is_file()


def test_failure_while_writing_leaves_no_partial_output_and_keeps_the_old_one(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    written = []

    def failing_write_shard(path, shard):
        written.append(path)
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_writer, "write_shard", failing_write_shard)
    with pytest.raises(OSError, match="disk full"):
        convert(FIXTURE_DIR / "llm", output, force=True)
    assert written and not written[0].exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert [path.name for path in output.iterdir()] == ["keep.txt"]


def test_vision_tower_folder_next_to_the_llm_weights_is_found_without_vision_argument(tmp_path, reference_conversion):
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURE_DIR / "llm", llm)
    shutil.copytree(FIXTURE_DIR / "vision", llm / "vision_tower")
    output = convert_checkpoint(str(llm), tmp_path / "out", layout="conv_llava")
    assert converted_tensors(output).keys() == reference_conversion.keys()


@pytest.mark.parametrize("layout", ["conv_llava", "fast_vlm"])
def test_select_layer_minus_two_drops_the_block_the_original_deletes(tmp_path, reference_conversion, layout):
    """A tower cut by `mm_vision_select_layer=-2` is just a shorter tower: the stock layout expresses it too."""
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURE_DIR / "llm", llm)
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "mm_vision_select_layer": -2}))
    vision = tmp_path / "vision"
    shutil.copytree(FIXTURE_DIR / "vision", vision)
    vision_config = json.loads((vision / "config.json").read_text())
    (vision / "config.json").write_text(json.dumps({**vision_config, "depths": [1, 1, 2, 1, 2]}))
    state = read_state(vision / "pytorch_model.bin")
    extra = {
        name.replace("layers.0.", "layers.1."): torch.randn_like(t)
        for name, t in state.items()
        if name.startswith("encoder.stages.4.layers.0.")
    }
    torch.save({**state, **extra}, vision / "pytorch_model.bin")
    output = convert(llm, tmp_path / "out", vision=vision, layout=layout)
    tensors = converted_tensors(output)
    if layout == "fast_vlm":  # stock transformers loads it, every weight in place
        _, info = AutoModelForImageTextToText.from_pretrained(output, output_loading_info=True)
        assert not any(info.values())
    assert tensors.keys() == reference_conversion.keys()
    assert all(torch.equal(tensors[name], reference_conversion[name]) for name in tensors)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float64"}, "--dtype"),
        ({"max_shard_size": "lots"}, "--max-shard-size"),
        ({"max_shard_size": "0GB"}, "positive"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ConversionError, match=message):
        convert(FIXTURE_DIR / "llm", tmp_path / "out", **kwargs)


def test_missing_local_folder_that_is_no_hub_id_is_refused_clearly(tmp_path):
    with pytest.raises(ConversionError, match="neither a local folder nor a downloadable Hub repository"):
        convert_checkpoint(str(tmp_path / "no" / "such" / "folder"), tmp_path / "out", str(FIXTURE_DIR / "vision"))


def test_output_that_would_replace_the_original_checkpoint_is_refused(tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURE_DIR / "llm", llm)
    for output in (llm, tmp_path):
        with pytest.raises(ConversionError, match="would replace the original checkpoint"):
            convert(llm, output, force=True)
    assert sorted(path.name for path in llm.iterdir()) == sorted(path.name for path in (FIXTURE_DIR / "llm").iterdir())
