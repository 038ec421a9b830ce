"""
Train one stage of ConvLLaVA (same as the `convllava-train` console script), e.g. stage 3 on 8 GPUs:

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml examples/train.py \
        --stage 3 --model ./convllava-stage2 --data llava_v1_5_mix665k.json --image-folder ./images \
        --output ./convllava-stage3 --bf16 --per_device_train_batch_size 16

Any `transformers.TrainingArguments` flag can be added; the stage's preset fills learning rate, global batch
(gradient accumulation is derived from it), epochs, warmup, weight decay, optimizer and schedule.
"""

from convllava_hf.training.cli import main

if __name__ == "__main__":
    main()
