"""A multi-image, multi-turn chat with ConvLLaVA's processor and model.

    python examples/chat_multiturn.py --model path/to/converted-convllava   # a converted checkpoint
    python examples/chat_multiturn.py                                        # a RANDOM demo model (gibberish answers)

The images are the bundled demo picture and two crops of it with other aspect ratios (pass --images for yours).
"""

import argparse
from pathlib import Path

import PIL.Image
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from convllava_hf.cli.demo import DEMO_IMAGE, build_demo_model_and_processor


def default_images() -> list[PIL.Image.Image]:
    picture = PIL.Image.open(DEMO_IMAGE).convert("RGB")
    return [picture, picture.crop((100, 80, 380, 330)), picture.crop((380, 0, 620, 427))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="a converted ConvLLaVA checkpoint folder or Hub id (default: random demo model)"
    )
    parser.add_argument("--images", nargs=3, type=Path, help="three image files")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    if args.model:
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype="auto").eval()
        processor = AutoProcessor.from_pretrained(args.model)
    else:
        model, processor = build_demo_model_and_processor()
    first, second, third = [PIL.Image.open(path) for path in args.images] if args.images else default_images()

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
        ).to(model.device)
        with torch.inference_mode():
            output_ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = processor.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        question = next(item["text"] for item in content if item["type"] == "text")
        print(f"USER ({len(inputs['image_sizes'])} images so far): {question}\nASSISTANT: {answer}\n")
    print("Last prompt:", repr(processor.apply_chat_template(messages)))


if __name__ == "__main__":
    main()
