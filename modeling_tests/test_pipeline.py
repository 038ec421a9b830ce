"""pipeline("image-text-to-text") on a tiny ConvLLaVA saved to disk."""

import PIL.Image
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from convllava_hf.conversion.processor_building import processor_from_original
from tiny_models import FIXTURE_DIR, tiny_model

LANDSCAPE = PIL.Image.open(FIXTURE_DIR / "images" / "landscape_320x200.png")
PORTRAIT = PIL.Image.open(FIXTURE_DIR / "images" / "portrait_150x260.png")


@pytest.fixture(scope="module", params=["pad", "preserve"])
def saved_model_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    processor = processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", image_aspect_ratio=request.param)
    model = tiny_model()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def chat(image: PIL.Image.Image, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def generate_directly(folder, image: PIL.Image.Image, prompt: str, max_new_tokens: int) -> str:
    """The package's own processor + greedy `generate` + `decode` on the same folder and inputs: the reference."""
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_pipeline_answers_chat_messages_as_generate_does(saved_model_dir):
    answer = pipeline("image-text-to-text", model=str(saved_model_dir))(
        text=chat(LANDSCAPE, "What is shown?"), max_new_tokens=5, return_full_text=False
    )
    prompt = AutoProcessor.from_pretrained(saved_model_dir).apply_chat_template(
        chat(LANDSCAPE, "What is shown?"), add_generation_prompt=True
    )
    expected = generate_directly(saved_model_dir, LANDSCAPE, prompt, 5)
    assert expected and answer[0]["generated_text"] == expected


def test_pipeline_accepts_plain_images_and_text_as_generate_does(saved_model_dir):
    prompt = "USER: <image>\nWhat is shown? ASSISTANT:"
    answer = pipeline("image-text-to-text", model=str(saved_model_dir))(
        images=LANDSCAPE, text=prompt, max_new_tokens=5, return_full_text=False
    )
    expected = generate_directly(saved_model_dir, LANDSCAPE, prompt, 5)
    assert expected and answer[0]["generated_text"] == expected


def test_pipeline_batch_with_different_aspect_ratios_equals_one_by_one(saved_model_dir):
    pipe = pipeline("image-text-to-text", model=str(saved_model_dir))
    conversations = [chat(LANDSCAPE, "What is shown?"), chat(PORTRAIT, "Describe the colors please.")]
    one_by_one = [pipe(text=c, max_new_tokens=6, return_full_text=False)[0]["generated_text"] for c in conversations]
    batched = pipe(text=conversations, batch_size=2, max_new_tokens=6, return_full_text=False)
    assert [result[0]["generated_text"] for result in batched] == one_by_one
