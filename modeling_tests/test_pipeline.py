"""pipeline("image-text-to-text") on a tiny ConvLLaVA saved to disk."""

import PIL.Image
import pytest
from transformers import pipeline

from convllava_hf import ConvLlavaProcessor
from tiny_models import FIXTURE_DIR, tiny_model

LANDSCAPE = PIL.Image.open(FIXTURE_DIR / "images" / "landscape_320x200.png")
PORTRAIT = PIL.Image.open(FIXTURE_DIR / "images" / "portrait_150x260.png")


@pytest.fixture(scope="module", params=["pad", "preserve"])
def saved_model_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    processor = ConvLlavaProcessor.from_original(
        FIXTURE_DIR / "llm", FIXTURE_DIR / "vision", image_aspect_ratio=request.param
    )
    model = tiny_model()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def chat(image: PIL.Image.Image, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_pipeline_answers_chat_messages(saved_model_dir):
    answer = pipeline("image-text-to-text", model=str(saved_model_dir))(
        text=chat(LANDSCAPE, "What is shown?"), max_new_tokens=5, return_full_text=False
    )
    assert isinstance(answer[0]["generated_text"], str) and answer[0]["generated_text"]


def test_pipeline_accepts_plain_images_and_text(saved_model_dir):
    prompt = "USER: <image>\nWhat is shown? ASSISTANT:"
    answer = pipeline("image-text-to-text", model=str(saved_model_dir))(
        images=LANDSCAPE, text=prompt, max_new_tokens=5, return_full_text=False
    )
    assert isinstance(answer[0]["generated_text"], str)


def test_pipeline_batch_with_different_aspect_ratios_equals_one_by_one(saved_model_dir):
    pipe = pipeline("image-text-to-text", model=str(saved_model_dir))
    conversations = [chat(LANDSCAPE, "What is shown?"), chat(PORTRAIT, "Describe the colors please.")]
    one_by_one = [pipe(text=c, max_new_tokens=6, return_full_text=False)[0]["generated_text"] for c in conversations]
    batched = pipe(text=conversations, batch_size=2, max_new_tokens=6, return_full_text=False)
    assert [result[0]["generated_text"] for result in batched] == one_by_one
