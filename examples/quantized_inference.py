"""
Ask a converted ConvLLaVA-7B checkpoint about an image, with its language model quantized by bitsandbytes.

    python examples/quantized_inference.py CHECKPOINT_DIR IMAGE "What is unusual about this image?" [--bits 8]

CHECKPOINT_DIR is a folder written by `convllava-convert` (config, safetensors and processor files). Only the
language model's linear layers are quantized (nf4 with double quantization by default); the ConvNeXt tower, the
projector and lm_head stay in bfloat16 (float16 on GPUs without bf16). Weights take about 4.9 GiB in 4-bit and
7.8 GiB in 8-bit, versus 13.9 GiB in bfloat16 (see README, "Memory"), so ConvLLaVA-1536 fits an 8 GB GPU in 4-bit.
Needs `pip install "convllava-hf[quantization]"`. Without a GPU it runs on the CPU, slowly.
"""

import argparse

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

import convllava_hf  # noqa: F401  (registers ConvLLaVA with the Auto classes)


def compute_dtype() -> torch.dtype:
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="converted ConvLLaVA folder (or Hub id)")
    parser.add_argument("image", help="image file")
    parser.add_argument("question")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4, help="nf4 (default) or LLM.int8()")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    dtype = compute_dtype()
    if args.bits == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(
        args.checkpoint, quantization_config=quantization, dtype=dtype, device_map="auto"
    ).eval()

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(args.image)
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())

    memory = f"weights {model.get_memory_footprint() / 2**30:.2f} GiB"
    if torch.cuda.is_available():
        memory += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(f"[{args.bits}-bit language model; {memory}]")


if __name__ == "__main__":
    main()
