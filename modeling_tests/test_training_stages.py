"""The three training stages end to end on the tiny model: what learns, what stays frozen, checkpoints, resume, LoRA."""

import json
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from convllava_hf import ConvLlavaForConditionalGeneration
from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from convllava_hf.training import parse_args
from convllava_hf.training.cli import build_trainer, main
from tiny_models import FIXTURE_DIR, tiny_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
#: (width, height): landscape, portrait and square images; in "preserve" mode 2 to 16 image tokens each.
SIZES = [(256, 128), (96, 192), (200, 200), (320, 120), (128, 256), (150, 100), (64, 64), (180, 240)]
STEPS = 30


def build_dataset(folder: Path) -> Path:
    """16 LLaVA records: single- and two-turn questions about images of mixed aspect ratios, one two-image record."""
    (folder / "images").mkdir(parents=True)
    records = []
    for index in range(15):
        colour = list(COLOURS)[index % len(COLOURS)]
        width, height = SIZES[index % len(SIZES)]
        image = PIL.Image.new("RGB", (width, height), COLOURS[colour])
        PIL.ImageDraw.Draw(image).ellipse([width // 4, height // 4, width // 2, height // 2], fill=(255, 255, 255))
        image.save(folder / "images" / f"{index}.png")
        question = "What colour is this image?"
        conversation = [{"from": "human", "value": f"{question}\n<image>" if index % 3 else f"<image>\n{question}"}]
        conversation.append({"from": "gpt", "value": f"It is {colour}."})
        if index % 2:
            answer = "No." if colour == "yellow" else "A bit."
            conversation += [{"from": "human", "value": "Is it dark?"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"sample-{index}", "image": f"{index}.png", "conversations": conversation})
    conversation = [
        {"from": "human", "value": "<image> and <image>: colours?"},
        {"from": "gpt", "value": "It is red and green."},
    ]
    records.append({"id": "two-images", "image": ["0.png", "1.png"], "conversations": conversation})
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


def save_base_model(folder: Path) -> Path:
    """
    The tiny ConvLLaVA plus the fixture's processor, with a language model scaled like a trained one (logits of std ~2,
    as in the original-tiny fixture) so that the frozen LLM of stages 1-2 reacts to what the vision side sends.
    """
    model = tiny_model(seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.model.language_model.named_parameters():
            if parameter.ndim == 2:
                std = 0.5 if "embed" in name else 0.18 if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.12
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision").save_pretrained(folder)
    return folder


def train(stage: int, model: Path, data: Path, output: Path, *extra: str) -> None:
    main(
        [
            f"--stage={stage}",
            f"--model={model}",
            f"--data={data}",
            f"--image-folder={data.parent / 'images'}",
            f"--output={output}",
            f"--max_steps={STEPS}",
            "--per_device_train_batch_size=4",
            "--global_batch_size=4",
            "--image_aspect_ratio=preserve",
            "--lr_scheduler_type=constant",
            "--logging_steps=1",
            "--save_strategy=no",
            "--report_to=none",
            "--use_cpu",
            "--disable_tqdm=true",
            "--dataloader_num_workers=0",
            *extra,
        ]
    )


def losses(output: Path) -> list[float]:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


#: stage -> (the checkpoint it starts from, its settings). Stage 2 starts from the base model so that its loss has
#: room to fall; stage 3 continues from stage 2's output folder as the recipe does.
RUNS = {
    1: ("base", ["--learning_rate=1e-2", "--activation_checkpointing=true"]),
    2: ("base", ["--learning_rate=3e-3", "--activation_checkpointing=false"]),
    3: ("stage2", ["--learning_rate=2e-3", "--activation_checkpointing=false"]),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Base model and data, then one 30-step run per stage (see `RUNS`)."""
    root = tmp_path_factory.mktemp("training")
    paths = {"data": build_dataset(root / "data"), "base": save_base_model(root / "base")}
    for stage, (source, extra) in RUNS.items():
        paths[f"stage{stage}"] = root / f"stage{stage}"
        train(stage, paths[source], paths["data"], paths[f"stage{stage}"], *extra)
    return paths


def changed_and_unchanged(before: Path, after: Path) -> tuple[set[str], set[str]]:
    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    assert old.keys() == new.keys()
    changed = {name for name in old if not torch.equal(old[name], new[name])}
    return changed, set(old) - changed


VISION_STAGE = "model.vision_tower.encoder.stages.{}."
TRAINED_PREFIXES = {
    1: ("model.multi_modal_projector.", VISION_STAGE.format(4)),
    2: ("model.multi_modal_projector.", VISION_STAGE.format(2), VISION_STAGE.format(3), VISION_STAGE.format(4)),
    3: ("model.multi_modal_projector.", "model.language_model.", "lm_head."),
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_trains_exactly_its_parameters_and_the_loss_drops(workspace, stage):
    changed, unchanged = changed_and_unchanged(workspace[RUNS[stage][0]], workspace[f"stage{stage}"])
    trained = {name for name in changed | unchanged if name.startswith(TRAINED_PREFIXES[stage])}
    assert trained and changed == trained, f"frozen but changed: {changed - trained}; unchanged: {trained - changed}"
    history = losses(workspace[f"stage{stage}"])
    assert len(history) == STEPS
    start, end = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert end < 0.7 * start, history


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_output_is_a_normal_checkpoint_with_its_processor(workspace, stage):
    model = ConvLlavaForConditionalGeneration.from_pretrained(workspace[f"stage{stage}"])
    processor = ConvLlavaProcessor.from_pretrained(workspace[f"stage{stage}"])
    assert processor.image_processor.image_aspect_ratio == "preserve"  # the mode it was trained with
    if stage < 3:
        return
    image = PIL.Image.new("RGB", (200, 100), COLOURS["red"])
    messages = [{"role": "user", "content": "<image>\nWhat colour is this image?"}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.startswith("It is red")


def test_lora_stage3_saves_an_adapter_that_loads_back_onto_the_base_model(workspace, tmp_path):
    args, training_args = parse_args(
        [
            "--stage=3",
            f"--model={workspace['stage2']}",
            f"--data={workspace['data']}",
            f"--output={tmp_path}",
            f"--image-folder={workspace['data'].parent / 'images'}",
            "--lora",
            "--lora_r=8",
            "--lora_alpha=16",
            "--max_steps=8",
            "--learning_rate=2e-3",
            "--per_device_train_batch_size=4",
            "--global_batch_size=4",
            "--use_cpu",
            "--report_to=none",
            "--disable_tqdm=true",
        ]
    )
    trainer = build_trainer(args, training_args)
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "adapter_config.json").is_file() and not (tmp_path / "model.safetensors").exists()
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert any("lora_A" in name for name in adapter) and any("multi_modal_projector" in name for name in adapter)
    assert all("vision_tower" not in name for name in adapter)

    processor = ConvLlavaProcessor.from_pretrained(tmp_path)
    image = PIL.Image.new("RGB", (128, 64), COLOURS["blue"])
    inputs = processor(images=[image], text="<image>\nColour?", return_tensors="pt")
    base = ConvLlavaForConditionalGeneration.from_pretrained(workspace["stage2"]).eval()
    with torch.no_grad():
        trained = trainer.model.eval()(**inputs).logits
        before = base(**inputs).logits
        on_base = PeftModel.from_pretrained(base, tmp_path).eval()
        torch.testing.assert_close(on_base(**inputs).logits, trained)
        torch.testing.assert_close(AutoModelForImageTextToText.from_pretrained(tmp_path)(**inputs).logits, trained)
        torch.testing.assert_close(on_base.merge_and_unload()(**inputs).logits, trained, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, trained, atol=1e-3)
