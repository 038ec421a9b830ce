"""`convllava-train`: one stage of the ConvLLaVA recipe on the Hugging Face Trainer, one GPU or many (accelerate)."""

import logging
import os
import sys

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel

from ..model_loading import CheckpointLoadError, load_model_and_processor
from ..processing_conv_llava import ConvLlavaProcessor
from .arguments import ConvLlavaArguments, ConvLlavaTrainingArguments, parse_args
from .collator import ConvLlavaDataCollator
from .data import LlavaDataset
from .initialization import assemble_conv_llava
from .output_folder import RunIdentity, check_output_dir, resolve_resume, start_run
from .stages import STAGE_PRESETS, freeze_for_stage
from .trainer import PROJECTOR_MODULE_NAME, ConvLlavaTrainer

logger = logging.getLogger(__name__)

#: Above this, a tokenizer's `model_max_length` is transformers' "no limit" placeholder.
NO_LENGTH_LIMIT = 10**9


def lora_config(model: PreTrainedModel, args: ConvLlavaArguments) -> LoraConfig:
    """LoRA on every linear layer of the language model; the projector is trained and saved in full."""
    linear = [name for name, module in model.model.language_model.named_modules() if isinstance(module, nn.Linear)]
    names = {name.rsplit(".", 1)[-1] for name in linear}
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=rf"model\.language_model\..*\.({'|'.join(sorted(names))})",
        modules_to_save=[PROJECTOR_MODULE_NAME],
        task_type="CAUSAL_LM",
    )


def load_model(
    args: ConvLlavaArguments, training_args: ConvLlavaTrainingArguments
) -> tuple[PreTrainedModel | PeftModel, ConvLlavaProcessor]:
    """
    The model of `args.model` (its language model in 4-bit NF4 with `--load_in_4bit`) with only what the stage trains
    left trainable (LoRA adapters with `--lora`), and the processor of `--processor` or `--model`.
    """
    compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    try:
        model, processor = load_model_and_processor(
            args.model,
            dtype=args.model_dtype,
            device_map={"": training_args.device} if args.load_in_4bit else None,
            quantization="4bit" if args.load_in_4bit else None,
            compute_dtype=compute_dtype,
            attn_implementation=args.attn_implementation,
            for_training=True,
            processor_id=args.processor,
        )
    except CheckpointLoadError as error:
        raise ValueError(f"--model {args.model!r} cannot be loaded: {error}") from error
    if not args.lora:
        freeze_for_stage(model, args.stage, args.vision_trainable_from)
        return model, processor
    model.requires_grad_(False)
    if args.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(model, args)), processor


def starting_model(
    args: ConvLlavaArguments, training_args: ConvLlavaTrainingArguments
) -> tuple[PreTrainedModel | PeftModel, ConvLlavaProcessor]:
    """The stage's starting model (assembled from `--model` + `--vision_tower`, or loaded) and its processor."""
    if args.vision_tower:
        dtype, attention = args.model_dtype, args.attn_implementation
        model, processor = assemble_conv_llava(args.model, args.vision_tower, dtype, attention)
        freeze_for_stage(model, args.stage)
    else:
        model, processor = load_model(args, training_args)
    model.config.use_cache = False
    return model, processor


def build_trainer(args: ConvLlavaArguments, training_args: ConvLlavaTrainingArguments) -> ConvLlavaTrainer:
    """Processor, model, dataset, collator and trainer of one stage."""
    model, processor = starting_model(args, training_args)
    if args.image_aspect_ratio is not None:
        processor.image_processor.image_aspect_ratio = args.image_aspect_ratio
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set one (LLaVA uses <unk>) and save the processor.")
    max_length = args.model_max_length
    if max_length is None and tokenizer.model_max_length < NO_LENGTH_LIMIT:
        max_length = tokenizer.model_max_length
    dataset = LlavaDataset(
        args.data,
        processor,
        image_folder=args.image_folder,
        model_max_length=max_length,
        on_broken_record=args.on_broken_record,
        on_overlong_sample=args.on_overlong_sample,
        require_images=args.stage in (1, 2),
        allow_images_outside_folder=args.allow_images_outside_folder,
    )
    return ConvLlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=ConvLlavaDataCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=processor,
        projector_lr=training_args.projector_lr,
    )


def check_parameter_sharding(trainer: ConvLlavaTrainer) -> None:
    """
    Refuse "preserve" mode when parameters are sharded (ZeRO-3, FSDP): the model runs the vision tower once per
    distinct image size, so processes would gather the tower's parameters a different number of times and deadlock.
    """
    deepspeed = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    sharded = trainer.is_fsdp_enabled or (deepspeed is not None and deepspeed.zero_stage == 3)
    if sharded and trainer.processing_class.image_processor.image_aspect_ratio != "pad":
        raise ValueError(
            "With ZeRO-3 or FSDP every process must run the vision tower equally often per step, which "
            "image_aspect_ratio='preserve' (one tower call per image size) does not give: use "
            "--image_aspect_ratio pad, or ZeRO-2."
        )


def main(argv: list[str] | None = None) -> None:
    """Train one stage and save a checkpoint folder (model + processor, or a LoRA adapter) in `--output`."""
    args, training_args = parse_args(argv)
    if not os.path.isfile(args.data):
        sys.exit(f"convllava-train: --data {args.data}: no such file.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(
        "Stage %d (%s): global batch %d = %d per device x %d accumulation x %d processes.",
        args.stage,
        STAGE_PRESETS[args.stage].description,
        training_args.global_batch_size,
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
    )
    inputs = {"--model": args.model, "--vision_tower": args.vision_tower, "--processor": args.processor}
    check_output_dir(training_args.output_dir, inputs, training_args.overwrite_output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    run_id = start_run(training_args.output_dir, resume, write=training_args.should_save)
    trainer = build_trainer(args, training_args)
    trainer.add_callback(RunIdentity(run_id))
    check_parameter_sharding(trainer)
    distributed = "FSDP" if trainer.is_fsdp_enabled else trainer.accelerator.distributed_type.value
    logger.info("Distributed: %s over %d process(es).", distributed, training_args.world_size)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        logger.warning(
            "The accelerate config asks for FSDP, but accelerate enables FSDP only on GPUs (and similar devices): "
            "this run is %s, every process holding the whole model.",
            distributed,
        )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()


if __name__ == "__main__":
    main()
