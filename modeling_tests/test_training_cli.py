"""convllava-train's arguments: stage presets, global batch, LoRA/QLoRA set-up, stage-2 freezing, shipped configs."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from bitsandbytes.nn import Linear4bit

from convllava_hf.training import STAGE_PRESETS, freeze_for_stage, gradient_accumulation_steps, parse_args
from convllava_hf.training.cli import build_trainer, main
from test_training_stages import build_dataset, save_base_model
from tiny_models import tiny_model

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {"model": save_base_model(root / "base"), "data": build_dataset(root / "data"), "output": root / "out"}


def required(base: dict[str, Path], stage: int) -> list[str]:
    data = base["data"]
    return [
        f"--stage={stage}",
        f"--model={base['model']}",
        f"--data={data}",
        f"--image-folder={data.parent / 'images'}",
        f"--output={base['output']}",
        "--use_cpu",
    ]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_presets_fill_the_training_arguments(base, stage):
    args, training = parse_args(required(base, stage))
    preset = STAGE_PRESETS[stage]
    assert args.stage == stage and training.output_dir == str(base["output"])
    assert training.learning_rate == preset.learning_rate and training.num_train_epochs == 1
    assert training.warmup_steps == 0.03 and training.weight_decay == 0 and training.lr_scheduler_type == "cosine"
    assert training.optim == "adamw_torch" and training.activation_checkpointing is True
    assert training.global_batch_size == (256 if stage < 3 else 128)
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == training.global_batch_size


def test_explicit_flags_win_over_the_preset_and_set_the_accumulation(base):
    args, training = parse_args(
        [
            *required(base, 2),
            "--learning_rate=1e-4",
            "--global_batch_size=64",
            "--per_device_train_batch_size=8",
            "--vision_trainable_from=4",
            "--gradient_checkpointing=false",
            "--lr_scheduler_type=linear",
        ]
    )
    assert training.learning_rate == 1e-4 and training.gradient_accumulation_steps == 8
    assert args.vision_trainable_from == 4
    assert training.activation_checkpointing is False and training.lr_scheduler_type == "linear"
    _, lora = parse_args([*required(base, 3), "--lora"])
    assert lora.learning_rate == 2e-4 and lora.projector_lr == 2e-5


def test_global_batch_is_per_device_times_accumulation_times_processes():
    assert gradient_accumulation_steps(256, 16, 8) == 2 and gradient_accumulation_steps(128, 4, 1) == 32
    with pytest.raises(ValueError, match="not a multiple of per-device batch 16 x 3 processes"):
        gradient_accumulation_steps(128, 16, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--global_batch_size=8", "--per_device_train_batch_size=4", "--gradient_accumulation_steps=4"], "contradict"),
        (["--global_batch_size=10", "--per_device_train_batch_size=4"], "not a multiple"),
    ],
)
def test_inconsistent_batch_settings_are_rejected(base, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args([*required(base, 3), *extra])


@pytest.mark.parametrize(
    ("stage", "extra", "message"),
    [
        (1, ["--lora"], "--lora applies to stage 3"),
        (3, ["--load_in_4bit"], "needs --lora"),
        (2, ["--vision_trainable_from=6"], "stage 1-5"),
    ],
)
def test_invalid_combinations_are_rejected(base, stage, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args([*required(base, stage), *extra])


@pytest.mark.parametrize(
    ("first", "trained_stages", "stem"), [(3, {2, 3, 4}, False), (5, {4}, False), (1, {0, 1, 2, 3, 4}, True)]
)
def test_stage2_trains_the_projector_and_the_convnext_stages_from_the_configured_one(first, trained_stages, stem):
    model = tiny_model()
    trainable = freeze_for_stage(model, 2, vision_trainable_from=first)
    stages = {int(name.split(".")[4]) for name in trainable if name.startswith("model.vision_tower.encoder.stages.")}
    assert stages == trained_stages
    assert any(name.startswith("model.vision_tower.embeddings.") for name in trainable) == stem
    assert {name for name in trainable if not name.startswith("model.vision_tower.")} == {
        name for name, _ in model.named_parameters() if name.startswith("model.multi_modal_projector.")
    }


def test_lora_trains_adapters_at_the_lr_and_the_full_projector_at_its_own(base):
    trainer = build_trainer(*parse_args([*required(base, 3), "--lora", "--lora_r=4", "--lora_alpha=8"]))
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "multi_modal_projector.modules_to_save" in name for name in trainable)
    assert all("language_model" in name for name in trainable if "lora_" in name)
    optimizer = trainer.create_optimizer()
    learning_rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad:
            assert learning_rate_of[id(parameter)] == (2e-5 if "multi_modal_projector" in name else 2e-4), name
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(trainable)


def test_qlora_quantizes_only_the_language_model_and_trains(base, tmp_path):
    args, training = parse_args(
        [
            *required(base, 3),
            "--lora",
            "--load_in_4bit",
            "--lora_r=4",
            "--lora_alpha=8",
            "--max_steps=3",
            "--per_device_train_batch_size=2",
            "--global_batch_size=2",
            "--report_to=none",
            f"--output={tmp_path}",
        ]
    )
    trainer = build_trainer(args, training)
    modules = dict(trainer.model.named_modules())
    assert any(isinstance(module, Linear4bit) for name, module in modules.items() if ".language_model." in name)
    assert not any(isinstance(module, Linear4bit) for name, module in modules.items() if ".language_model." not in name)
    projector = [p for name, p in trainer.model.named_parameters() if "multi_modal_projector.modules_to_save" in name]
    assert projector and all(p.dtype == torch.float32 and p.requires_grad for p in projector)
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "processor_config.json").is_file()


def readme_qlora_command() -> list[str]:
    """The README's QLoRA fine-tuning command, split into arguments (after `convllava-train`)."""
    readme = (REPOSITORY / "README.md").read_text()
    block = readme.split("Fine-tuning a released model on your own data with QLoRA")[1].split("```bash\n")[1]
    command = shlex.split(block.split("```")[0].replace("\\\n", " "))
    assert command[0] == "convllava-train" and "--bf16" in command and "--load_in_4bit" in command
    return command[1:]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU defaults: this machine has a GPU")
def test_readme_qlora_command_trains_on_a_cpu_as_written(base, tmp_path):
    """`--bf16` on a CPU needs the Trainer's `use_cpu`, which convllava-train sets itself when there is no GPU."""
    paths = {"./ConvLLaVA-sft-1536-hf": base["model"], "my_data.json": base["data"], "./my-lora": tmp_path / "lora"}
    paths["./my_images"] = base["data"].parent / "images"
    command = [str(paths.get(argument, argument)) for argument in readme_qlora_command()]
    args, training = parse_args([*command, "--max_steps=1", "--report_to=none"])
    assert training.use_cpu and training.bf16 and training.device.type == "cpu"
    main([*command, "--max_steps=1", "--report_to=none", "--lora_r=4", "--lora_alpha=8", "--global_batch_size=4"])
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("name", "kind", "zero_stage"),
    [("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3), ("fsdp", "FSDP", None)],
)
def test_shipped_accelerate_configs_describe_8_gpus(name, kind, zero_stage):
    config = load_config_from_file(str(REPOSITORY / "examples" / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == 8 and config.mixed_precision == "bf16"
    if zero_stage:
        assert config.deepspeed_config["zero_stage"] == zero_stage
        assert "gradient_accumulation_steps" not in config.deepspeed_config  # left to --global_batch_size
        assert config.deepspeed_config.get("zero3_save_16bit_model", False) == (zero_stage == 3)
    else:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert "LlamaDecoderLayer" in config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]


def test_example_script_shows_the_stage_options():
    script = REPOSITORY / "examples" / "train.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--stage", "--model", "--data", "--image_folder", "--output", "--global_batch_size", "--lora"):
        assert flag in result.stdout


def test_a_missing_data_file_is_one_line_naming_it_before_anything_loads(tmp_path):
    missing = tmp_path / "nowhere" / "data.json"
    argv = ["--stage=3", f"--model={tmp_path / 'no-model'}", f"--data={missing}", f"--output={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == f"convllava-train: --data {missing}: no such file."
