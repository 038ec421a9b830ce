"""ConvLLaVA through `pipeline("image-text-to-text")`: chat messages, plain prompts, and a batch of aspect ratios.

python examples/pipeline_inference.py --model path/to/converted-convllava
python examples/pipeline_inference.py            # a RANDOM demo model, through a temporary folder
"""

import argparse
import tempfile

import PIL.Image
from transformers import pipeline

from convllava_hf.cli.demo import DEMO_IMAGE, build_demo_model_and_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="a converted ConvLLaVA checkpoint folder or Hub id (default: random demo model)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="convllava-demo-") as demo_folder:  # deleted once the pipeline is built
        if args.model is None:
            for part in build_demo_model_and_processor():
                part.save_pretrained(demo_folder)
        pipe = pipeline("image-text-to-text", model=args.model or demo_folder)

    picture = PIL.Image.open(DEMO_IMAGE).convert("RGB")
    tall_crop = picture.crop((380, 0, 620, 427))

    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is in this picture?"}],
        }
    ]
    print(pipe(text=messages, max_new_tokens=24, return_full_text=False)[0]["generated_text"])

    prompt = "USER: <image>\nDescribe the sky. ASSISTANT:"
    print(pipe(images=picture, text=prompt, max_new_tokens=24, return_full_text=False)[0]["generated_text"])

    batch = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What do you see?"}]}]
        for image in (picture, tall_crop)
    ]
    for result in pipe(text=batch, batch_size=2, max_new_tokens=24, return_full_text=False):
        print(result[0]["generated_text"])


if __name__ == "__main__":
    main()
