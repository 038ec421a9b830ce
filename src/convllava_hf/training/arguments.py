"""Command-line arguments of `convllava-train`: the data/model options and `TrainingArguments` with stage presets."""

import argparse
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import HfArg, string_to_bool

from ..grounding import ASPECT_RATIO_MODES
from .stages import (
    LORA_LEARNING_RATE,
    LORA_PROJECTOR_LEARNING_RATE,
    STAGE_PRESETS,
    check_vision_trainable_from,
    gradient_accumulation_steps,
)


@dataclass
class ConvLlavaArguments:
    """What to train and on which data (everything that is not a `TrainingArguments` field)."""

    stage: int = HfArg(
        help="1: projector + ConvNeXt stage 5; 2: projector + later ConvNeXt stages; 3: LLM + projector.",
        metadata={"choices": sorted(STAGE_PRESETS)},
    )
    model: str = HfArg(
        help="ConvLLaVA checkpoint folder (e.g. the previous stage's output) or Hub id; with --vision_tower, the "
        "language model to start from (e.g. lmsys/vicuna-7b-v1.5)."
    )
    data: str = HfArg(help="LLaVA-format .json (or .jsonl) file.")
    image_folder: str | None = HfArg(
        default=None, help="Folder the records' image paths are relative to (default: the data file's)."
    )
    processor: str | None = HfArg(default=None, help="Processor folder, when it is not saved with the model.")
    vision_tower: str | None = HfArg(
        default=None,
        help="Stage 1 from scratch: a five-stage ConvNeXt folder (e.g. from convert_laion_convnext) that, with the "
        "--model language model and a new projector, makes the starting model.",
    )
    vision_trainable_from: int = HfArg(default=3, help="Stage 2: first trainable ConvNeXt stage (1-5).")
    image_aspect_ratio: Literal[ASPECT_RATIO_MODES] | None = HfArg(default=None, help="Override the processor's mode.")
    model_max_length: int | None = HfArg(default=None, help="Max tokens per sample (default: the tokenizer's).")
    on_broken_record: Literal["skip", "raise"] | None = HfArg(
        default=None,
        help="Broken records: warn and skip, or raise. Default: skip, but stop before training when more than 10%% of "
        "the image records name unreadable image files (a wrong --image-folder); 'skip' skips them all the same.",
    )
    allow_images_outside_folder: bool = HfArg(
        default=False, help="Accept records whose image paths are absolute or lead out of --image-folder with '..'."
    )
    on_overlong_sample: Literal["drop", "raise"] = HfArg(
        default="drop", help="Samples that truncation would cut through an image: warn and drop, or raise."
    )
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = HfArg(
        default="float32", help="dtype of the loaded weights."
    )
    attn_implementation: str | None = HfArg(default=None, help="e.g. sdpa, flash_attention_2, eager.")
    lora: bool = HfArg(default=False, help="Stage 3: train LoRA adapters on the LLM (and the full projector).")
    lora_r: int = HfArg(default=128, help="LoRA rank.")
    lora_alpha: int = HfArg(default=256, help="LoRA alpha.")
    lora_dropout: float = HfArg(default=0.05, help="LoRA dropout.")
    load_in_4bit: bool = HfArg(default=False, help="QLoRA: load the LLM in 4-bit NF4 (needs --lora).")

    def __post_init__(self):
        if self.lora and self.stage != 3:
            raise ValueError(f"--lora applies to stage 3 (instruction tuning), not stage {self.stage}.")
        if self.vision_tower and self.stage != 1:
            raise ValueError("--vision_tower assembles a new model with a random projector: only stage 1 starts there.")
        if self.vision_tower and self.processor:
            raise ValueError("--vision_tower builds the processor from --model and the tower; drop --processor.")
        if self.load_in_4bit and not self.lora:
            raise ValueError("--load_in_4bit (QLoRA) needs --lora: a 4-bit model can only be trained through adapters.")
        check_vision_trainable_from(self.vision_trainable_from, "--vision_trainable_from")


@dataclass
class ConvLlavaTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the global batch target and a projector learning rate; checkpointing on by default."""

    output_dir: str = HfArg(aliases=["--output"], help="Where checkpoints and the final model go.")
    global_batch_size: int | None = HfArg(
        default=None, help="per-device batch x accumulation x processes; sets the accumulation (default: the stage's)."
    )
    projector_lr: float | None = HfArg(default=None, help="Learning rate of the projector (default: --learning_rate).")
    overwrite_output_dir: bool = HfArg(
        default=False, help="Write into a non-empty --output that holds no training run (its files may be replaced)."
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        super().__post_init__()


def stage_defaults(stage: int, lora: bool = False) -> dict[str, object]:
    """`TrainingArguments` defaults of a stage, and `use_cpu` without a GPU (explicit command-line values still win)."""
    preset = STAGE_PRESETS[stage]
    defaults = {
        "learning_rate": LORA_LEARNING_RATE if lora else preset.learning_rate,
        "global_batch_size": preset.global_batch_size,
        "per_device_train_batch_size": preset.per_device_train_batch_size,
        "num_train_epochs": preset.num_train_epochs,
        "warmup_steps": preset.warmup_ratio,
        "weight_decay": preset.weight_decay,
        "optim": preset.optim,
        "lr_scheduler_type": preset.lr_scheduler_type,
        "remove_unused_columns": False,
    }
    if stage == 3:
        # a batch of text-only samples leaves the projector unused, which DistributedDataParallel must be told about
        defaults["ddp_find_unused_parameters"] = True
    if lora:
        defaults["projector_lr"] = LORA_PROJECTOR_LEARNING_RATE
    if not torch.accelerator.is_available():
        # on a machine without a GPU the Trainer runs on the CPU anyway, but takes --bf16 (CPU autocast) only with
        # use_cpu ("Your setup doesn't support bf16/gpu" otherwise); the README's GPU commands then run unchanged
        defaults["use_cpu"] = True
    return defaults


def parse_args(argv: list[str] | None = None) -> tuple[ConvLlavaArguments, ConvLlavaTrainingArguments]:
    """
    Parse `--stage ... --model ... --data ... --output ...` and any `TrainingArguments` flag. The stage's preset fills
    every optimisation value not given, and gradient accumulation is computed from the global batch target.
    """
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--stage", type=int, choices=sorted(STAGE_PRESETS))
    pre_parser.add_argument("--lora", type=string_to_bool, nargs="?", const=True, default=False)
    known, _ = pre_parser.parse_known_args(argv)
    parser = HfArgumentParser((ConvLlavaArguments, ConvLlavaTrainingArguments))
    if known.stage is not None:
        parser.set_defaults(**stage_defaults(known.stage, known.lora))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    accumulation = gradient_accumulation_steps(
        training_args.global_batch_size, training_args.per_device_train_batch_size, training_args.world_size
    )
    if training_args.gradient_accumulation_steps != accumulation:
        parser.set_defaults(gradient_accumulation_steps=accumulation)
        args, training_args = parser.parse_args_into_dataclasses(args=argv)
        if training_args.gradient_accumulation_steps != accumulation:
            raise ValueError(
                f"--gradient_accumulation_steps {training_args.gradient_accumulation_steps} contradicts the global "
                f"batch {training_args.global_batch_size} = {training_args.per_device_train_batch_size} per device x "
                f"{training_args.world_size} processes x {accumulation}; set only --global_batch_size."
            )
    return args, training_args
