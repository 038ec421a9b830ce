"""Training ConvLLaVA with the Hugging Face Trainer: LLaVA-format data, the three-stage recipe, `convllava-train`."""

from .arguments import ConvLlavaArguments, ConvLlavaTrainingArguments, parse_args
from .collator import ConvLlavaDataCollator
from .data import (
    IGNORE_INDEX,
    BrokenRecordError,
    LlavaDataset,
    LlavaRecord,
    OverlongSampleError,
    encode_conversation,
    parse_record,
)
from .initialization import assemble_conv_llava
from .stages import STAGE_PRESETS, StagePreset, freeze_for_stage, gradient_accumulation_steps, trainable_modules
from .trainer import ConvLlavaTrainer

__all__ = [
    "IGNORE_INDEX",
    "STAGE_PRESETS",
    "BrokenRecordError",
    "ConvLlavaArguments",
    "ConvLlavaDataCollator",
    "ConvLlavaTrainer",
    "ConvLlavaTrainingArguments",
    "LlavaDataset",
    "LlavaRecord",
    "OverlongSampleError",
    "StagePreset",
    "assemble_conv_llava",
    "encode_conversation",
    "freeze_for_stage",
    "gradient_accumulation_steps",
    "parse_args",
    "parse_record",
    "trainable_modules",
]
