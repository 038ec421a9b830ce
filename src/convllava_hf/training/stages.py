"""The three-stage ConvLLaVA recipe: optimisation presets, which parameters each stage trains, the global batch."""

from dataclasses import dataclass

from torch import nn

from ..modeling_conv_llava import ConvLlavaForConditionalGeneration

#: ConvNeXt stages of the released towers; stage 5 is the one ConvLLaVA adds to the LAION ConvNeXt.
NUM_VISION_STAGES = 5


@dataclass(frozen=True)
class StagePreset:
    """Optimisation defaults of one stage (the original ConvLLaVA scripts); every value is overridable."""

    description: str
    learning_rate: float
    global_batch_size: int
    per_device_train_batch_size: int = 16
    num_train_epochs: float = 1.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "cosine"


STAGE_PRESETS: dict[int, StagePreset] = {
    1: StagePreset("projector initialisation: projector + ConvNeXt stage 5", 3e-4, global_batch_size=256),
    2: StagePreset("vision-language pretraining: projector + later ConvNeXt stages", 2e-5, global_batch_size=256),
    3: StagePreset("instruction tuning: language model + projector", 2e-5, global_batch_size=128),
}

#: Stage 3 with LoRA on the language model (the original `finetune_lora` recipe): adapters at 2e-4, projector at 2e-5.
LORA_LEARNING_RATE = 2e-4
LORA_PROJECTOR_LEARNING_RATE = 2e-5


def check_vision_trainable_from(vision_trainable_from: int, name: str = "vision_trainable_from") -> None:
    """Refuse a first trainable ConvNeXt stage (1-based, stage 2 of the recipe) that the tower does not have."""
    if not 1 <= vision_trainable_from <= NUM_VISION_STAGES:
        raise ValueError(f"{name} must be a ConvNeXt stage 1-{NUM_VISION_STAGES}, got {vision_trainable_from}.")


def trainable_modules(
    model: ConvLlavaForConditionalGeneration, stage: int, vision_trainable_from: int = 3
) -> dict[str, nn.Module]:
    """
    The modules a stage trains, by name; everything else stays frozen.

    Args:
        model: the full ConvLLaVA model.
        stage: 1 (projector + ConvNeXt stage 5), 2 (projector + ConvNeXt stages `vision_trainable_from`..5, the stem
            too when that is 1) or 3 (language model, its head and the projector).
        vision_trainable_from: first trainable ConvNeXt stage (1-based) in stage 2.
    """
    if stage not in STAGE_PRESETS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}.")
    inner = model.model
    vision_stages = inner.vision_tower.encoder.stages
    if len(vision_stages) != NUM_VISION_STAGES:
        raise ValueError(
            f"The ConvLLaVA recipe needs a {NUM_VISION_STAGES}-stage ConvNeXt, this one has {len(vision_stages)}."
        )
    modules: dict[str, nn.Module] = {"model.multi_modal_projector": inner.multi_modal_projector}
    if stage == 1:
        modules[f"model.vision_tower.encoder.stages.{NUM_VISION_STAGES - 1}"] = vision_stages[-1]
    elif stage == 2:
        check_vision_trainable_from(vision_trainable_from)
        if vision_trainable_from == 1:
            modules["model.vision_tower.embeddings"] = inner.vision_tower.embeddings
        for index in range(vision_trainable_from - 1, NUM_VISION_STAGES):
            modules[f"model.vision_tower.encoder.stages.{index}"] = vision_stages[index]
    else:
        modules["model.language_model"] = inner.language_model
        modules["lm_head"] = model.lm_head
    return modules


def freeze_for_stage(model: ConvLlavaForConditionalGeneration, stage: int, vision_trainable_from: int = 3) -> list[str]:
    """Set `requires_grad` for a stage (see [`trainable_modules`]); returns the names of the trainable parameters."""
    model.requires_grad_(False)
    for module in trainable_modules(model, stage, vision_trainable_from).values():
        module.requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def gradient_accumulation_steps(global_batch_size: int, per_device_batch_size: int, num_processes: int) -> int:
    """Accumulation steps so that per-device batch x accumulation x processes equals the global batch exactly."""
    if min(global_batch_size, per_device_batch_size, num_processes) < 1:
        raise ValueError(
            f"Batch sizes and process count must be positive, got global {global_batch_size}, "
            f"per device {per_device_batch_size}, processes {num_processes}."
        )
    per_step = per_device_batch_size * num_processes
    if global_batch_size % per_step:
        raise ValueError(
            f"Global batch {global_batch_size} is not a multiple of per-device batch {per_device_batch_size} x "
            f"{num_processes} processes = {per_step}; change --global_batch_size or --per_device_train_batch_size."
        )
    return global_batch_size // per_step
