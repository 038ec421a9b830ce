"""
Hub remote code: converted and saved folders load with `trust_remote_code=True` in a process where `convllava_hf`
cannot be imported, and compute exactly what the package computes.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto import modeling_auto

from convllava_hf import ConvLlavaConfig
from convllava_hf.configuration_conv_llava import CONVLLAVA_CODE_VERSION
from convllava_hf.conversion.convert_convllava import convert_checkpoint
from convllava_hf.conversion.model_card import IMAGE_PLACEHOLDER, MODEL_ID_PLACEHOLDER
from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.remote_code import main as add_remote_code_main
from remote_code_worker import run_folder
from tiny_models import FIXTURE_DIR, tiny_config, tiny_model

WORKER = Path(__file__).resolve().parent / "remote_code_worker.py"
ORIGINAL = load_file(FIXTURE_DIR / "reference" / "reference.safetensors")
ORIGINAL_CASE = json.loads((FIXTURE_DIR / "reference" / "cases.json").read_text())["cases"][0]  # image + question
IMAGE_TOKEN_ID = 800  # the converted fixture's <image>, after its 800-token vocabulary
MODULES = {
    "configuration_conv_llava.py",
    "modeling_conv_llava.py",
    "image_processing_conv_llava.py",
    "processing_conv_llava.py",
}
MODEL_MAP = {
    "AutoConfig": "configuration_conv_llava.ConvLlavaConfig",
    "AutoModel": "modeling_conv_llava.ConvLlavaModel",
    "AutoModelForImageTextToText": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
    "AutoModelForPreTraining": "modeling_conv_llava.ConvLlavaForConditionalGeneration",
}
PROCESSOR_MAP = {"AutoProcessor": "processing_conv_llava.ConvLlavaProcessor"}
IMAGE_PROCESSOR_MAP = {"AutoImageProcessor": "image_processing_conv_llava.ConvLlavaImageProcessor", **PROCESSOR_MAP}
SPEC = {
    "image": str(FIXTURE_DIR / "images" / ORIGINAL_CASE["image"]),
    "question": ORIGINAL_CASE["question"],
    "max_new_tokens": len(ORIGINAL_CASE["generated_ids"]),
}


def card_snippet(card: str, folder: Path, index: int) -> str:
    """The model card's `index`-th Python snippet, run on `folder` with the fixture's image."""
    snippet = card.split("```python\n")[1 + index].split("```", 1)[0]
    return snippet.replace(MODEL_ID_PLACEHOLDER, str(folder)).replace(IMAGE_PLACEHOLDER, SPEC["image"])


def strip_remote_code(folder: Path) -> None:
    """Make `folder` look like one written before this package saved its code: no module files, no auto_map."""
    for module in folder.glob("*.py"):
        module.unlink()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        content = json.loads((folder / name).read_text())
        content.pop("auto_map", None)
        content.pop("convllava_code_version", None)
        if isinstance(content.get("image_processor"), dict):
            content["image_processor"].pop("auto_map", None)
        (folder / name).write_text(json.dumps(content))


def copy_without(folder: Path, destination: Path, missing: str) -> Path:
    shutil.copytree(folder, destination)
    (destination / missing).unlink()
    return destination


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote-code")
    converted = convert_checkpoint(
        str(FIXTURE_DIR / "llm"), root / "converted", str(FIXTURE_DIR / "vision"), layout="conv_llava"
    )
    saved = root / "saved"
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")
    model = tiny_model()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    model.config.save_pretrained(root / "config-only")
    processor.image_processor.save_pretrained(root / "image-processor-only")
    processor.save_pretrained(root / "processor-only")
    old = root / "old"
    shutil.copytree(converted, old)
    strip_remote_code(old)
    stale = root / "stale"
    shutil.copytree(saved, stale)
    module = stale / "configuration_conv_llava.py"
    older = f"CONVLLAVA_CODE_VERSION = {CONVLLAVA_CODE_VERSION - 1}"
    module.write_text(re.sub(r"^CONVLLAVA_CODE_VERSION = \d+", older, module.read_text(), count=1, flags=re.MULTILINE))
    return {
        "converted": converted,
        "saved": saved,
        "config-only": root / "config-only",
        "image-processor-only": root / "image-processor-only",
        "processor-only": root / "processor-only",
        "old": old,
        "stale": stale,
        "no-configuration": copy_without(saved, root / "no-configuration", "configuration_conv_llava.py"),
        "no-modeling": copy_without(saved, root / "no-modeling", "modeling_conv_llava.py"),
    }


@pytest.fixture(scope="module")
def upgraded_old_folder(folders) -> Path:
    """The old folder after `convllava-add-remote-code` (checked against the package before it is upgraded)."""
    upgraded = folders["old"].parent / "upgraded"
    shutil.copytree(folders["old"], upgraded)
    assert add_remote_code_main([str(upgraded)]) == 0
    return upgraded


LOAD_CASES = [
    ("config_only", "config-only", "AutoConfig", True),
    ("image_processor_only", "image-processor-only", "AutoImageProcessor", True),
    ("processor_only", "processor-only", "AutoProcessor", True),
    ("no_trust_model", "converted", "AutoModelForImageTextToText", False),
    ("no_trust_processor", "converted", "AutoProcessor", False),
    ("missing_configuration", "no-configuration", "AutoModelForImageTextToText", True),
    ("missing_modeling", "no-modeling", "AutoModelForImageTextToText", True),
    ("stale_modules", "stale", "AutoConfig", True),
    ("old_folder", "old", "AutoConfig", True),
]


@pytest.fixture(scope="module")
def without_package(folders, upgraded_old_folder, tmp_path_factory) -> tuple[dict, dict]:
    """One fresh process, `convllava_hf` blocked: every check's results and tensors."""
    out = tmp_path_factory.mktemp("worker")
    card = (folders["converted"] / "README.md").read_text()
    spec = {
        "snippet": card_snippet(card, folders["converted"], index=1),
        **SPEC,
        "folders": {
            "converted": str(folders["converted"]),
            "saved": str(folders["saved"]),
            "upgraded": str(upgraded_old_folder),
            "resaved": str(out / "resaved"),  # the converted folder loaded and saved again by remote code
        },
        "load_cases": [
            {"name": name, "folder": str(folders[folder]), "auto_class": auto_class, "trust_remote_code": trust}
            for name, folder, auto_class, trust in LOAD_CASES
        ],
    }
    (out / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(out / "modules"),
        "PYTHONPATH": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out / "spec.json"), str(out)],
        env=env, cwd=out, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads((out / "results.json").read_text()), load_file(out / "tensors.safetensors")


@pytest.fixture(scope="module")
def with_package(folders, upgraded_old_folder) -> tuple[dict, dict]:
    tensors: dict = {}
    results = {
        name: run_folder(name, str(folder), SPEC, tensors, trust_remote_code=None)
        for name, folder in (("converted", folders["converted"]), ("saved", folders["saved"]), ("old", folders["old"]))
    }
    return results, tensors


def test_the_package_registers_every_auto_class_that_transformers_maps_llava_to(folders):
    llava_mappings = {
        name.removesuffix("_NAMES"): names["llava"]
        for name, names in vars(modeling_auto).items()
        if name.endswith("_MAPPING_NAMES")
        and isinstance(names, dict)
        and "llava" in names
        and name != "CONFIG_MAPPING_NAMES"
    }
    auto_classes = {
        name: auto_class
        for name, auto_class in vars(modeling_auto).items()
        if name.startswith("AutoModel") and getattr(auto_class, "_model_mapping", None) is not None
    }
    config = json.loads((folders["saved"] / "config.json").read_text())
    registered = {}
    for mapping_name, llava_class in llava_mappings.items():
        auto_class = next(
            auto for auto in auto_classes.values() if auto._model_mapping is getattr(modeling_auto, mapping_name)
        )
        model = auto_class.from_config(tiny_config())
        registered[auto_class.__name__] = type(model).__name__
        assert type(model).__name__ == llava_class.replace("Llava", "ConvLlava"), auto_class.__name__
        assert config["auto_map"][auto_class.__name__] == f"modeling_conv_llava.{type(model).__name__}"
    assert set(registered) | {"AutoConfig"} == set(config["auto_map"])
    assert "AutoModelForMultimodalLM" in registered


def test_the_worker_cannot_import_the_package(without_package):
    results, _ = without_package
    assert results["package_importable"] is False
    assert results["loaded_convllava_hf_modules"] == []


@pytest.mark.parametrize("name", ["converted", "saved", "upgraded", "resaved"])
def test_every_auto_class_and_the_pipeline_load_remote_code(without_package, name):
    result = without_package[0]["folders"][name]
    assert "failure" not in result, result.get("failure")
    expected = {
        "AutoConfig": "ConvLlavaConfig",
        "AutoModel": "ConvLlavaModel",
        "AutoModelForImageTextToText": "ConvLlavaForConditionalGeneration",
        "AutoModelForMultimodalLM": "ConvLlavaForConditionalGeneration",
        "AutoProcessor": "ConvLlavaProcessor",
        "AutoImageProcessor": "ConvLlavaImageProcessor",
    }
    classes = {auto: path.rsplit(".", 1)[1] for auto, path in result["classes"].items()}
    assert classes == expected
    assert all(path.startswith("transformers_modules.") for path in result["classes"].values())
    assert result["pipeline_model_class"].startswith("transformers_modules.")


@pytest.mark.parametrize(
    ("name", "reference"),
    [("converted", "converted"), ("saved", "saved"), ("upgraded", "old"), ("resaved", "converted")],
)
def test_remote_code_outputs_equal_the_package(without_package, with_package, name, reference):
    remote, remote_tensors = without_package[0]["folders"][name], without_package[1]
    package, package_tensors = with_package[0][reference], with_package[1]
    assert all(path.startswith("convllava_hf.") for path in package["classes"].values())
    for key in ("prompt", "input_ids", "generated_ids", "pipeline_answer"):
        assert remote[key] == package[key], key
    for tensor in ("pixel_values", "image_processor_pixel_values"):
        assert torch.equal(remote_tensors[f"{name}.{tensor}"], package_tensors[f"{reference}.{tensor}"]), tensor
    for tensor in ("logits", "multimodal_lm_logits", "base_model_hidden"):
        difference = (remote_tensors[f"{name}.{tensor}"] - package_tensors[f"{reference}.{tensor}"]).abs().max()
        assert difference.item() <= 1e-6, tensor


def test_the_converted_fixture_through_remote_code_reproduces_the_original_implementation(without_package):
    remote, tensors = without_package[0]["folders"]["converted"], without_package[1]
    expanded = []
    for token in ORIGINAL_CASE["input_ids"]:  # the original's single -200 marker becomes 16 image tokens
        expanded += [IMAGE_TOKEN_ID] * 16 if token == -200 else [token]
    assert remote["prompt"] == ORIGINAL_CASE["prompt"]
    assert remote["input_ids"][0] == expanded
    new_tokens = remote["generated_ids"][0][len(expanded) :]
    assert new_tokens == ORIGINAL["case0.generated_ids"][0].tolist()
    assert remote["pipeline_answer"].strip() == ORIGINAL_CASE["generated_text"]
    assert (tensors["converted.pixel_values"] - ORIGINAL["case0.pixel_values"]).abs().max().item() <= 1e-5
    logits = tensors["converted.logits"][..., :IMAGE_TOKEN_ID]
    assert (logits - ORIGINAL["case0.logits"]).abs().max().item() <= 1e-4  # test_conversion_fixture's tolerance


@pytest.mark.parametrize("name", ["converted", "saved"])
def test_auto_maps_name_every_auto_class(folders, name):
    folder = folders[name]
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"] == MODEL_MAP
    assert config["convllava_code_version"] == CONVLLAVA_CODE_VERSION
    assert processor["auto_map"] == PROCESSOR_MAP
    assert processor["image_processor"]["auto_map"] == IMAGE_PROCESSOR_MAP
    assert {path.name for path in folder.glob("*.py")} == MODULES


def test_copied_modules_use_only_flat_relative_imports_of_each_other(folders):
    for module in folders["converted"].glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in MODULES, (module.name, node.module)
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            assert not any(name.partition(".")[0] == "convllava_hf" for name in names), module.name


def test_config_image_processor_and_processor_saved_alone_load_as_remote_code(without_package):
    cases = without_package[0]["load_cases"]
    expected = {
        "config_only": ".configuration_conv_llava.ConvLlavaConfig",
        "image_processor_only": ".image_processing_conv_llava.ConvLlavaImageProcessor",
        "processor_only": ".processing_conv_llava.ConvLlavaProcessor",
    }
    for case, class_path in expected.items():
        assert cases[case].startswith("loaded transformers_modules.") and cases[case].endswith(class_path), case


@pytest.mark.parametrize("case", ["no_trust_model", "no_trust_processor"])
def test_without_trust_remote_code_or_the_package_the_error_asks_for_trust_remote_code(without_package, case):
    # transformers' own message (resolve_trust_remote_code): the only one possible without this package installed.
    error = without_package[0]["load_cases"][case]
    assert error.startswith("ValueError: ")
    assert "contains custom code which must be executed" in error
    assert "Please pass the argument `trust_remote_code=True`" in error


@pytest.mark.parametrize(
    ("case", "missing"),
    [("missing_configuration", "configuration_conv_llava.py"), ("missing_modeling", "modeling_conv_llava.py")],
)
def test_a_missing_module_file_is_named_in_the_error(without_package, case, missing):
    error = without_package[0]["load_cases"][case]
    assert not error.startswith("loaded")
    assert missing in error


def test_stale_modules_are_refused_with_what_to_rerun(without_package):
    error = without_package[0]["load_cases"]["stale_modules"]
    assert error.startswith("ValueError: ")
    assert f"written by ConvLLaVA code version {CONVLLAVA_CODE_VERSION}" in error
    assert "configuration_conv_llava.py, version 0" in error
    assert "re-run `convllava-add-remote-code FOLDER`" in error


def test_a_folder_without_remote_code_or_the_package_gets_transformers_unknown_model_type_error(without_package):
    # transformers' own message: nothing of this package runs here; the README says to run convllava-add-remote-code.
    error = without_package[0]["load_cases"]["old_folder"]
    assert error.startswith("ValueError: ") and "model type `conv_llava`" in error


def test_a_folder_without_remote_code_still_loads_with_the_package(folders, with_package):
    assert not list(folders["old"].glob("*.py"))
    assert "auto_map" not in json.loads((folders["old"] / "config.json").read_text())
    assert type(AutoModelForImageTextToText.from_pretrained(folders["old"])).__module__.startswith("convllava_hf.")
    assert type(AutoProcessor.from_pretrained(folders["old"])).__module__.startswith("convllava_hf.")
    assert with_package[0]["old"]["input_ids"] == with_package[0]["converted"]["input_ids"]


def test_the_package_refuses_a_config_written_by_newer_code(folders, tmp_path):
    config = json.loads((folders["converted"] / "config.json").read_text())
    newer = {**config, "convllava_code_version": CONVLLAVA_CODE_VERSION + 1}
    (tmp_path / "config.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="upgrade it"):
        ConvLlavaConfig.from_pretrained(tmp_path)


def test_add_remote_code_refuses_a_folder_that_is_not_convllava(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert add_remote_code_main([str(tmp_path)]) == 2
    assert "has model_type 'llava', not 'conv_llava'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.py"))


def test_the_model_cards_remote_code_snippet_prints_what_its_package_snippet_prints(folders, without_package, capsys):
    card = (folders["converted"] / "README.md").read_text()
    assert "import convllava_hf" in card_snippet(card, folders["converted"], index=0)
    assert "import convllava_hf" not in card_snippet(card, folders["converted"], index=1)
    exec(card_snippet(card, folders["converted"], index=0), {})
    assert without_package[0]["snippet_output"] == capsys.readouterr().out
    # it asks case 0's question of case 0's image, so its greedy answer starts with the original's 8 tokens
    assert without_package[0]["snippet_output"].startswith(ORIGINAL_CASE["generated_text"])


def test_transformers_serve_cannot_load_convllava_as_the_readme_says(folders):
    # transformers 5.24's serve looks models up in its built-in tables, then as `getattr(transformers, architecture)`,
    # and has no registration hook: the README points to vLLM instead. When this test fails, revisit that.
    from transformers.cli.serving.model_manager import ModelManager

    manager = ModelManager(device="cpu", dtype="auto", trust_remote_code=True)
    with pytest.raises(AttributeError, match="has no attribute ConvLlavaForConditionalGeneration"):
        manager.load_model_and_processor(f"{folders['saved']}@main")
