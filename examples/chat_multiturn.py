"""A multi-image, multi-turn chat with ConvLLaVA's processor and model.

    python examples/chat_multiturn.py --model path/to/converted-convllava   # a converted checkpoint
    python examples/chat_multiturn.py                                        # the tiny test fixture

Without `--model` the processor is built from the original-tiny fixture (its real tokenizer and image settings) and
the model has the fixture's shapes but RANDOM weights, so the answers are gibberish; the prompts and inputs are real.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoProcessor, ConvNextConfig

from convllava_hf import ConvLlavaConfig, ConvLlavaForConditionalGeneration, ConvLlavaProcessor

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original-tiny"
TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def fixture_model_and_processor() -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """The fixture's processor and a random-weight model of the fixture's shapes."""
    processor = ConvLlavaProcessor.from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")
    llm_config = json.loads((FIXTURE_DIR / "llm" / "config.json").read_text())
    config = ConvLlavaConfig(
        vision_config=ConvNextConfig.from_pretrained(FIXTURE_DIR / "vision").to_dict(),
        text_config={"model_type": "llama", "vocab_size": len(processor.tokenizer)}
        | {key: llm_config[key] for key in TEXT_KEYS},
        image_token_index=processor.image_token_id,
        image_resolution=processor.image_processor.resolution,
    )
    torch.manual_seed(0)
    return ConvLlavaForConditionalGeneration(config).eval(), processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a converted ConvLLaVA checkpoint folder (default: the tiny fixture)")
    parser.add_argument("--images", nargs=3, type=Path, default=sorted((FIXTURE_DIR / "images").glob("*.png")))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    if args.model:
        model = ConvLlavaForConditionalGeneration.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    else:
        model, processor = fixture_model_and_processor()

    first, second, third = (str(path) for path in args.images)
    user_turns = [
        [
            {"type": "image", "image": first},
            {"type": "image", "image": second},
            {"type": "text", "text": "How do these two pictures differ?"},
        ],
        [{"type": "image", "image": third}, {"type": "text", "text": "And how does this third one compare?"}],
        [{"type": "text", "text": "Which of the three has the most colours?"}],
    ]
    messages = []
    for content in user_turns:
        messages.append({"role": "user", "content": content})
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.inference_mode():
            output_ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = processor.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        question = next(item["text"] for item in content if item["type"] == "text")
        print(f"USER ({len(inputs['image_sizes'])} images so far): {question}\nASSISTANT: {answer}\n")
    print("Last prompt:", repr(processor.apply_chat_template(messages)))


if __name__ == "__main__":
    main()
