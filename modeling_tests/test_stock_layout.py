"""
The stock layout: a converted folder that plain transformers loads as `fast_vlm` (no package, no remote code) and
that reproduces the original; the package's classes load it too; the two layouts convert into each other losslessly.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from converted_tiny import convert_original_tiny
from convllava_hf import ConvLlavaConfig, ConvLlavaForConditionalGeneration, ConvLlavaProcessor
from convllava_hf.conversion.errors import ConversionError
from convllava_hf.conversion.layouts import convert_layout
from convllava_hf.conversion.layouts import main as convert_layout_main
from convllava_hf.conversion.model_card import IMAGE_PLACEHOLDER, MODEL_ID_PLACEHOLDER
from tiny_models import FIXTURE_DIR

WORKER = Path(__file__).resolve().parent / "stock_layout_worker.py"
REFERENCE = load_file(FIXTURE_DIR / "reference" / "reference.safetensors")
CASES = json.loads((FIXTURE_DIR / "reference" / "cases.json").read_text())["cases"]
SINGLE_CASES = [case for case in CASES if case["kind"] != "batch"]
IMAGE_TOKEN_ID, ORIGINAL_VOCAB = 800, 800
LOGITS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The fixture converted by the command-line converter in both layouts (the default is the stock one)."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        "fast_vlm": convert_original_tiny(root / "stock"),
        "conv_llava": convert_original_tiny(root / "package", layout="conv_llava"),
    }


@pytest.fixture(scope="module")
def stock_run(converted, tmp_path_factory) -> tuple[dict, dict]:
    """What plain transformers computes on the stock folder in a process where `convllava_hf` cannot be imported."""
    out = tmp_path_factory.mktemp("stock-run")
    card = (converted["fast_vlm"] / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    image = FIXTURE_DIR / "images" / SINGLE_CASES[0]["image"]
    spec = {
        "folder": str(converted["fast_vlm"]),
        "images": str(FIXTURE_DIR / "images"),
        "cases": SINGLE_CASES,
        "max_new_tokens": 8,
        "snippet": snippet.replace(MODEL_ID_PLACEHOLDER, str(converted["fast_vlm"])).replace(
            IMAGE_PLACEHOLDER, str(image)
        ),
    }
    (out / "spec.json").write_text(json.dumps(spec))
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent), "HOME": str(out)}
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out / "spec.json"), str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), load_file(out / "tensors.safetensors")


def expand_image_marker(input_ids: list[int]) -> list[int]:
    expanded = []
    for token in input_ids:
        expanded += [IMAGE_TOKEN_ID] * 16 if token == -200 else [token]
    return expanded


def test_stock_folder_holds_only_stock_classes_and_no_code(converted):
    folder = converted["fast_vlm"]
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    assert not list(folder.glob("*.py"))
    assert (config["model_type"], config["architectures"], config["vision_config"]["hidden_size"]) == (
        "fast_vlm", ["FastVlmForConditionalGeneration"], 64,
    )  # fmt: skip
    assert "auto_map" not in config and "auto_map" not in (folder / "tokenizer_config.json").read_text()
    assert {key: processor[key] for key in ("processor_class", "patch_size", "vision_feature_select_strategy")} == {
        "processor_class": "LlavaProcessor", "patch_size": 64, "vision_feature_select_strategy": "full",
    }  # fmt: skip
    assert processor["num_additional_image_tokens"] == 0 and processor["image_processor"]["do_pad"] is True
    assert "{%- generation -%}" in (folder / "chat_template.jinja").read_text()
    weights = {}  # ConvNextModel's pooling layernorm, which FastVLM never applies, as identity weights
    for shard in folder.glob("*.safetensors"):
        weights.update(load_file(shard))
    assert torch.equal(weights["model.vision_tower.layernorm.weight"], torch.ones(64))
    assert torch.equal(weights["model.vision_tower.layernorm.bias"], torch.zeros(64))


def test_plain_transformers_loads_the_stock_folder_without_the_package(stock_run):
    results, _ = stock_run
    assert results["package_importable"] is False and results["loaded_convllava_hf_modules"] == []
    assert results["classes"] == [
        "LlavaProcessor", "LlavaImageProcessorPil",
        "FastVlmForConditionalGeneration", "FastVlmForConditionalGeneration",
    ]  # fmt: skip
    assert results["loading_info"] == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda case: case["name"])
def test_stock_classes_reproduce_the_original_ids_pixels_logits_and_greedy_tokens(stock_run, case):
    results, tensors = stock_run
    ours = results["cases"][case["name"]]
    assert ours["prompt"] == case["prompt"]
    assert ours["input_ids"] == expand_image_marker(case["input_ids"])
    if case.get("image"):
        assert torch.equal(tensors[f"{case['name']}.pixel_values"], REFERENCE[f"{case['name']}.pixel_values"])
    logits = tensors[f"{case['name']}.logits"][..., :ORIGINAL_VOCAB]
    assert (logits - REFERENCE[f"{case['name']}.logits"]).abs().max().item() <= LOGITS_TOLERANCE
    assert ours["generated_ids"] == REFERENCE[f"{case['name']}.generated_ids"][0].tolist()


def test_stock_pipeline_and_model_card_snippet_answer_like_the_original(stock_run):
    results, _ = stock_run
    # The pipeline cuts the decoded prompt off the decoded whole, so a word's space stays, and a lone byte-fallback
    # byte (case2's "\x02") decodes differently at that boundary; the greedy ids are compared exactly above.
    printable = [case for case in SINGLE_CASES if all(c.isprintable() for c in case["generated_text"])]
    assert len(printable) == 3
    for case in printable:
        assert results["cases"][case["name"]]["pipeline_answer"].removeprefix(" ") == case["generated_text"]
    assert results["snippet_output"].startswith(SINGLE_CASES[0]["generated_text"])


def test_model_card_shows_stock_loading_first_then_what_the_package_adds(converted):
    card = (converted["fast_vlm"] / "README.md").read_text()
    snippets = card.split("```python\n")[1:]
    assert "convllava_hf" not in snippets[0] and "trust_remote_code" not in card
    assert 'pipeline("image-text-to-text", model=model_id)' in card
    assert "ConvLlavaProcessor.from_pretrained" in snippets[1] and 'image_aspect_ratio="preserve"' in snippets[1]


def test_model_cards_package_snippet_runs_preserve_mode_on_a_mixed_size_batch(converted, capsys):
    card = (converted["fast_vlm"] / "README.md").read_text()
    snippet = card.split("```python\n")[2].split("```", 1)[0]
    image = FIXTURE_DIR / "images" / SINGLE_CASES[0]["image"]
    exec(snippet.replace(MODEL_ID_PLACEHOLDER, str(converted["fast_vlm"])).replace(IMAGE_PLACEHOLDER, str(image)), {})
    answers = eval(capsys.readouterr().out)  # the printed list of the two decoded answers
    processor = ConvLlavaProcessor.from_pretrained(converted["fast_vlm"])
    model = ConvLlavaForConditionalGeneration.from_pretrained(converted["fast_vlm"]).eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=Image.open(image), text=prompt, image_aspect_ratio="preserve", return_tensors="pt")
    with torch.inference_mode():
        alone = model.generate(**inputs, max_new_tokens=64, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert len(answers) == 2 and answers[0] == processor.decode(alone, skip_special_tokens=True)


def test_package_classes_load_the_stock_folder_with_the_stock_logits(converted):
    folder = converted["fast_vlm"]
    model, info = ConvLlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    stock_model = AutoModelForImageTextToText.from_pretrained(folder)
    assert {kind: names for kind, names in info.items() if names} == {}
    processor, stock_processor = ConvLlavaProcessor.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    assert type(stock_model).__name__ == "FastVlmForConditionalGeneration"
    assert (processor.image_processor.resolution, processor.image_processor.image_aspect_ratio) == (256, "pad")
    rows = next(case for case in CASES if case["kind"] == "batch")["rows"]
    images = [Image.open(FIXTURE_DIR / "images" / row["image"]) for row in rows]
    prompts = [row["prompt"] for row in rows]
    ours = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    stock = stock_processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], stock["input_ids"]) and torch.equal(
        ours["pixel_values"], stock["pixel_values"]
    )
    with torch.inference_mode():
        assert torch.equal(model(**ours).logits, stock_model.eval()(**stock).logits)


def test_preserve_mode_works_on_the_stock_folder_as_on_the_package_folder(converted):
    image = Image.open(FIXTURE_DIR / "images" / SINGLE_CASES[0]["image"])  # 320x200: not square
    outputs = []
    for layout in ("fast_vlm", "conv_llava"):
        processor = ConvLlavaProcessor.from_pretrained(converted[layout])
        model = ConvLlavaForConditionalGeneration.from_pretrained(converted[layout]).eval()
        inputs = processor(
            images=image, text=SINGLE_CASES[0]["prompt"], image_aspect_ratio="preserve", return_tensors="pt"
        )
        with torch.inference_mode():
            outputs.append(
                (inputs["image_sizes"].tolist(), model.generate(**inputs, max_new_tokens=8, do_sample=False))
            )
    assert outputs[0][0] == outputs[1][0] == [[192, 256]]  # 200x320 scaled to 256 on the long side, cut to /64
    assert torch.equal(outputs[0][1], outputs[1][1])


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("start", ["conv_llava", "fast_vlm"])
def test_layout_round_trip_is_bit_identical(converted, tmp_path, start):
    other = {"conv_llava": "fast_vlm", "fast_vlm": "conv_llava"}[start]
    convert_layout(converted[start], tmp_path / "other", other)
    convert_layout(tmp_path / "other", tmp_path / "back", start)
    assert file_bytes(tmp_path / "back") == file_bytes(converted[start])
    assert file_bytes(tmp_path / "other") == file_bytes(converted[other])  # the converter writes the same folder


def test_converting_to_the_current_layout_says_so_and_writes_nothing(converted, tmp_path, capsys):
    assert convert_layout_main([str(converted["fast_vlm"]), str(tmp_path / "out"), "--layout", "fast_vlm"]) == 2
    assert "already in the fast_vlm layout; nothing to convert, nothing written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def edited_copy(folder: Path, destination: Path, file: str, edit) -> Path:
    shutil.copytree(folder, destination)
    content = json.loads((destination / file).read_text())
    edit(content)
    (destination / file).write_text(json.dumps(content))
    return destination


@pytest.mark.parametrize(
    ("file", "edit", "named"),
    [
        ("config.json", lambda c: c.update(vision_feature_layer=-2), "vision_feature_layer=-2"),
        ("processor_config.json", lambda c: c["image_processor"].update(image_aspect_ratio="preserve"),
         "image_aspect_ratio='preserve'"),
    ],
)  # fmt: skip
def test_fast_vlm_layout_refuses_settings_it_cannot_express_naming_them(converted, tmp_path, file, edit, named):
    source = edited_copy(converted["conv_llava"], tmp_path / "source", file, edit)
    with pytest.raises(ConversionError, match=f"cannot be written in the fast_vlm layout: {named}"):
        convert_layout(source, tmp_path / "out", "fast_vlm")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("file", "edit", "named"),
    [
        ("processor_config.json", lambda c: c.update(patch_size=32), "patch_size=32"),
        ("processor_config.json", lambda c: c.update(num_additional_image_tokens=1), "num_additional_image_tokens=1"),
        ("processor_config.json", lambda c: c["image_processor"].update(do_pad=False), "image_processor.do_pad=False"),
        ("processor_config.json", lambda c: c["image_processor"]["crop_size"].update(height=320), "crop_size"),
    ],
)  # fmt: skip
def test_package_processor_catches_a_stock_processor_config_edited_off_the_original_geometry(
    converted, tmp_path, file, edit, named
):
    folder = edited_copy(converted["fast_vlm"], tmp_path / "edited", file, edit)
    with pytest.raises(ValueError, match=named):
        ConvLlavaProcessor.from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["vision_config"].update(patch_size=8), "vision_config.patch_size"),
        (lambda c: c["vision_config"].update(hidden_size=48), "vision_config.hidden_size=48"),
        (lambda c: c.update(image_seq_length=17), "image_seq_length=17"),
    ],
)
def test_package_config_catches_a_stock_config_edited_off_the_original_geometry(converted, tmp_path, edit, named):
    folder = edited_copy(converted["fast_vlm"], tmp_path / "edited", "config.json", edit)
    with pytest.raises(ValueError, match=named):
        ConvLlavaConfig.from_pretrained(folder)


def test_stock_model_refuses_a_prompt_whose_image_token_count_does_not_match(converted):
    processor = AutoProcessor.from_pretrained(converted["fast_vlm"])
    model = AutoModelForImageTextToText.from_pretrained(converted["fast_vlm"]).eval()
    inputs = processor(
        images=Image.open(FIXTURE_DIR / "images" / SINGLE_CASES[0]["image"]),
        text=SINGLE_CASES[0]["prompt"],
        return_tensors="pt",
    )
    keep = inputs["input_ids"][0] != IMAGE_TOKEN_ID
    keep[(~keep).nonzero()[0]] = True  # one image token fewer than the image's 16 features
    with pytest.raises(ValueError, match="Image features and image tokens do not match"), torch.inference_mode():
        model(input_ids=inputs["input_ids"][:, keep], pixel_values=inputs["pixel_values"])


def test_llava_classes_refuse_convllava_loudly_rather_than_answer_wrongly(converted):
    """The README's note for LLaVA users: LLaVA's classes cannot run ConvLLaVA, and say so by failing, not silently."""
    processor = AutoProcessor.from_pretrained(converted["fast_vlm"])
    case = SINGLE_CASES[0]
    inputs = processor(
        images=Image.open(FIXTURE_DIR / "images" / case["image"]), text=case["prompt"], return_tensors="pt"
    )
    for layout in ("fast_vlm", "conv_llava"):
        llava = LlavaForConditionalGeneration.from_pretrained(converted[layout]).eval()
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), torch.inference_mode():
            llava(**inputs)


def test_torchvision_backend_differs_from_the_original_so_the_card_pins_pil(converted):
    """Run where torchvision is installed (the timm environment of .ci/run): the default backend is torchvision."""
    pytest.importorskip("torchvision", reason="needs torchvision (the timm environment of .ci/run)")
    case = SINGLE_CASES[1]
    image = Image.open(FIXTURE_DIR / "images" / case["image"])
    reference = REFERENCE[f"{case['name']}.pixel_values"]
    default = AutoProcessor.from_pretrained(converted["fast_vlm"])
    pinned = AutoProcessor.from_pretrained(converted["fast_vlm"], backend="pil")
    grey_level = 1 / 255 / min(default.image_processor.image_std)
    difference = (default.image_processor(image, return_tensors="pt")["pixel_values"] - reference).abs().max().item()
    assert type(default.image_processor).__name__ == "LlavaImageProcessor"
    assert 0 < difference <= 2 * grey_level + 1e-6
    assert torch.equal(pinned.image_processor(image, return_tensors="pt")["pixel_values"], reference)
