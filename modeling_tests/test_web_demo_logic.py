"""The web demo's model-side logic, which needs no Gradio: token grids, conversations, streaming, stop, start-up."""

import queue
import runpy
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import BatchFeature

from convllava_hf.cli.demo import build_demo_model_and_processor
from convllava_hf.cli.web_demo import main as web_demo
from convllava_hf.web.conversation import GenerationSettings, Turn, chat_messages, prepare_inputs, stream_answer
from convllava_hf.web.grounding_picture import BOX_COLOUR, draw_box, grounding_picture
from convllava_hf.web.token_grid import grid_preview, token_grid

SPACE_APP = Path(__file__).resolve().parents[1] / "examples" / "space" / "app.py"
RED = (200, 30, 30)


@pytest.fixture(scope="module")
def demo():
    return build_demo_model_and_processor()


@pytest.fixture
def wide_image(tmp_path) -> str:
    path = tmp_path / "wide.png"
    PIL.Image.new("RGB", (600, 200), RED).save(path)
    return str(path)


def greedy(settings_resolution: int = 768, mode: str = "pad", max_new_tokens: int = 12) -> GenerationSettings:
    return GenerationSettings(mode, settings_resolution, max_new_tokens, temperature=0.0, top_p=1.0)


# 3000x1000 at 1536: pad -> the whole 1536x1536 canvas, 24x24; preserve -> 1536x512, 24x8.
# At 768: pad 12x12; preserve 768x256 -> 12x4. A 1000x1000 square: 24x24 in both modes.
@pytest.mark.parametrize(
    ("height", "width", "resolution", "mode", "rows", "cols"),
    [
        (1000, 3000, 1536, "pad", 24, 24),
        (1000, 3000, 1536, "preserve", 8, 24),
        (1000, 3000, 768, "pad", 12, 12),
        (1000, 3000, 768, "preserve", 4, 12),
        (3000, 1000, 1024, "preserve", 16, 5),  # 1024 x 341.3 -> 320 = 5 cells (5.33 rounds down)
        (1000, 1000, 1536, "preserve", 24, 24),
    ],
)
def test_token_grid_counts_one_token_per_64_pixel_cell(demo, height, width, resolution, mode, rows, cols):
    grid = token_grid(demo[1].image_processor, height, width, resolution, mode)
    assert (grid.rows, grid.cols, grid.tokens) == (rows, cols, rows * cols)


def _line_columns(row: np.ndarray) -> list[int]:
    """Columns of a row of a uniformly red picture where a (light) grid line was drawn."""
    return [index for index, pixel in enumerate(row) if pixel[1] > RED[1] + 20]


def test_grid_preview_draws_a_line_every_64_pixels_of_the_content(demo):
    image = PIL.Image.new("RGB", (3000, 1000), RED)
    picture, grid = grid_preview(image, demo[1].image_processor, 1536, "preserve")
    assert picture.size == (512, 171)  # 1536x512 content scaled by 1/3
    lines = _line_columns(np.asarray(picture)[100])
    assert lines == [min(round(col * 64 / 3), 511) for col in range(grid.cols + 1)]

    picture, grid = grid_preview(image, demo[1].image_processor, 1536, "pad")
    assert picture.size == (512, 512) and grid.tokens == 576
    content_row = np.asarray(picture)[266]  # the red band is centred: rows 171..341 of the padded square
    assert _line_columns(content_row) == [min(round(col * 64 / 3), 511) for col in range(25)]
    mean_colour = tuple(int(mean * 255) for mean in demo[1].image_processor.image_mean)
    assert tuple(np.asarray(picture)[30, 10]) == mean_colour  # padding above the content, inside a cell


def test_draw_box_outlines_the_pixel_box_on_the_original_image():
    boxed = np.asarray(draw_box(PIL.Image.new("RGB", (400, 300), (0, 0, 0)), (100, 50, 300, 250)))
    assert tuple(boxed[150, 100]) == BOX_COLOUR and tuple(boxed[50, 200]) == BOX_COLOUR
    assert tuple(boxed[150, 200]) == (0, 0, 0) and tuple(boxed[20, 20]) == (0, 0, 0)


# A 400x200 image, box [0.25, 0.375, 0.75, 0.625]: in pad mode it is relative to the 400x400 square whose content
# starts 100 px down, so its pixels are x 100..300, y 150-100=50 .. 250-100=150; in preserve mode y 75..125.
@pytest.mark.parametrize(("mode", "top", "bottom"), [("pad", 50, 150), ("preserve", 75, 125)])
def test_grounding_picture_draws_the_answers_box_on_the_original_image(demo, mode, top, bottom):
    image = PIL.Image.new("RGB", (400, 200), (0, 0, 0))
    answer = "The dog is at [0.25, 0.375, 0.75, 0.625]."
    pixels = np.asarray(grounding_picture(demo[1], answer, image, mode))
    assert pixels.shape == (200, 400, 3)
    for x, y in [(100, 100), (299, 100), (200, top), (200, bottom - 1)]:
        assert tuple(pixels[y, x]) == BOX_COLOUR, (x, y)
    for x, y in [(95, 100), (305, 100), (200, top - 5), (200, bottom + 5), (200, 100)]:
        assert tuple(pixels[y, x]) == (0, 0, 0), (x, y)
    assert grounding_picture(demo[1], "A dog on a sofa.", image, mode) is None


def test_chat_messages_put_each_turns_images_before_its_text():
    turns = [Turn("user", "What is it?", ["a.png", "b.png"]), Turn("assistant", "A cat."), Turn("user", "Sure?")]
    assert chat_messages(turns) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]


def test_streamed_answer_is_the_greedy_generate_answer_and_grows_token_by_token(demo, wide_image):
    model, processor = demo
    turns = [Turn("user", "What is in this image?", [wide_image])]
    settings = greedy(max_new_tokens=12)
    inputs = prepare_inputs(processor, turns, settings, context_length=2048)

    prompt = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in this image? ASSISTANT:"
    )
    reference_inputs = processor(images=PIL.Image.open(wide_image), text=prompt, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], reference_inputs["pixel_values"], rtol=0, atol=0)
    assert inputs["input_ids"].tolist() == reference_inputs["input_ids"].tolist()
    with torch.inference_mode():
        reference_ids = model.generate(**reference_inputs, max_new_tokens=12, do_sample=False)
    new_ids = reference_ids[0, reference_inputs["input_ids"].shape[1] :]
    expected = processor.decode(new_ids, skip_special_tokens=True)

    updates = []
    for update in stream_answer(model, processor, inputs, settings, threading.Event(), time.perf_counter()):
        updates.append((update.text, update.done))
    final = update
    assert updates[-1] == (expected, True)
    partials = [text for text, done in updates if not done]
    assert len(set(partials)) > 1 and all(expected.startswith(text) for text in partials)
    assert final.new_tokens == len(new_ids)
    assert 0 < final.time_to_first_token < 60 and final.tokens_per_second > 0 and not final.stopped


def test_setting_stop_ends_generation_after_the_current_token_and_keeps_the_partial_answer(demo, wide_image):
    model, processor = demo
    settings = greedy(max_new_tokens=400)
    inputs = prepare_inputs(processor, [Turn("user", "Describe it.", [wide_image])], settings, 2048)
    stop = threading.Event()
    updates = []
    for update in stream_answer(model, processor, inputs, settings, stop, time.perf_counter()):
        updates.append(update.text)
        stop.set()
    final = update
    assert final.done and final.stopped and final.new_tokens <= 3
    assert final.text.startswith(updates[0])


class ScriptedModel:
    """Stands in for the model: `generate` streams the prompt and the token "a", calls `after_first_token`, ends."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, after_first_token):
        self.token = tokenizer.convert_tokens_to_ids("a")
        self.after_first_token = after_first_token

    def generate(self, input_ids, streamer, **kwargs):
        streamer.put(input_ids)
        streamer.put(torch.tensor([self.token]))
        self.after_first_token()
        streamer.end()


def test_an_error_in_generate_is_raised_in_the_callers_thread_after_the_streamed_text(demo):
    _, processor = demo

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    model = ScriptedModel(processor.tokenizer, out_of_memory)
    inputs = BatchFeature({"input_ids": torch.tensor([[1, 2, 3]])})
    texts = []
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        for update in stream_answer(model, processor, inputs, greedy(), threading.Event(), time.perf_counter()):
            texts.append((update.text, update.new_tokens))
    assert texts and set(texts) == {("a", 1)}


def test_no_token_within_the_timeout_raises_empty_and_asks_generation_to_stop(demo):
    _, processor = demo
    stop = threading.Event()
    model = ScriptedModel(processor.tokenizer, lambda: stop.wait(10))
    inputs = BatchFeature({"input_ids": torch.tensor([[1, 2, 3]])})
    start = time.perf_counter()
    with pytest.raises(queue.Empty):
        for _ in stream_answer(model, processor, inputs, greedy(), stop, start, token_timeout=0.2):
            pass
    assert stop.is_set() and time.perf_counter() - start < 5


def test_sampling_settings_reach_generate():
    assert greedy().generate_kwargs() == {"max_new_tokens": 12, "do_sample": False}
    sampled = GenerationSettings("pad", 768, 5, temperature=0.7, top_p=0.9).generate_kwargs()
    assert sampled == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


def test_more_images_than_the_context_holds_are_refused_with_the_counts(demo, wide_image):
    _, processor = demo
    # 14 images x 144 tokens = 2016 visual tokens; with the text and 64 new tokens past 2048
    turns = [Turn("user", "Compare them.", [wide_image] * 14)]
    with pytest.raises(ValueError, match=r"14 image\(s\) take 2016 visual tokens at 768 px in pad mode") as error:
        prepare_inputs(processor, turns, greedy(max_new_tokens=64), context_length=2048)
    assert "context of 2048 tokens" in str(error.value)
    prepare_inputs(processor, turns, greedy(mode="preserve", max_new_tokens=64), context_length=2048)  # 14 x 48


def test_an_unreadable_image_is_refused_with_its_position(demo, wide_image, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    turns = [Turn("user", "What is it?", [wide_image, str(broken)])]
    with pytest.raises(ValueError, match="Image 2 cannot be used: Could not decode an image"):
        prepare_inputs(demo[1], turns, greedy(), 2048)


def test_a_model_that_fails_to_load_stops_the_demo_with_the_error(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(SystemExit, match=f"could not load '{missing}'"):
        web_demo(["--model", str(missing)])
    assert "DEMO MODE" not in capsys.readouterr().err


def test_load_in_4bit_without_a_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        web_demo(["--load-in-4bit"])
    assert "--load-in-4bit needs --model" in capsys.readouterr().err


def test_space_app_reads_the_model_from_the_environment(tmp_path, monkeypatch):
    missing = tmp_path / "space-model"
    monkeypatch.setenv("CONVLLAVA_MODEL", str(missing))
    monkeypatch.setattr(sys, "argv", [str(SPACE_APP)])
    with pytest.raises(SystemExit, match=f"could not load '{missing}'"):
        runpy.run_path(str(SPACE_APP), run_name="__main__")


def _truncated_png(path: Path, size: tuple[int, int] = (600, 200)) -> str:
    """A PNG whose header is whole and whose pixel data is cut off: decoding it fails, reading its size does not."""
    data = path.with_suffix(".full.png")
    PIL.Image.effect_noise(size, 64).convert("RGB").save(data)
    path.write_bytes(data.read_bytes()[:200])
    return str(path)


def test_the_context_is_checked_from_the_image_headers_before_any_image_is_decoded(demo, tmp_path):
    # 60 mentions of one upload: refused for the context (60 x 144 tokens), not for the pixels it would decode
    turns = [Turn("user", "Compare them.", [_truncated_png(tmp_path / "cut.png")] * 60)]
    with pytest.raises(ValueError, match=r"Too much for the model: 60 image\(s\) take 8640 visual tokens at 768 px"):
        prepare_inputs(demo[1], turns, greedy(), context_length=2048)


def test_a_broken_image_is_named_as_uploaded_and_numbered_within_its_message(demo, wide_image, tmp_path):
    upload = tmp_path / "gradio-cache" / "3f9a0c"
    upload.mkdir(parents=True)
    broken = upload / "holiday.png"
    broken.write_bytes(b"not an image at all")
    turns = [Turn("user", "What is it?", [wide_image]), Turn("assistant", "Red."), Turn("user", "And?", [str(broken)])]
    with pytest.raises(ValueError) as error:
        prepare_inputs(demo[1], turns, greedy(), 2048)
    assert str(error.value).startswith("Image 1 cannot be used: Could not decode an image from 'holiday.png'")
    assert str(upload) not in str(error.value)


def test_a_typed_image_placeholder_is_refused_rather_than_counted_as_an_image(demo, wide_image):
    turns = [Turn("user", "What does <image> mean in <image>?", [wide_image])]
    with pytest.raises(ValueError, match="The question contains the text '<image>'"):
        prepare_inputs(demo[1], turns, greedy(), 2048)


def test_the_preview_of_a_16_bit_image_shows_the_grey_the_model_gets(demo, tmp_path):
    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)).save(path)  # the model reads 32896 / 257 = 128
    picture, _ = grid_preview(PIL.Image.open(path), demo[1].image_processor, 768, "preserve")
    assert tuple(np.asarray(picture)[100, 100]) == (128, 128, 128)


def test_a_large_upload_is_previewed_from_a_reduced_decode_with_its_full_size_grid(demo, tmp_path):
    from convllava_hf.image_files import open_reduced, upright_size

    path = tmp_path / "large.jpg"
    PIL.Image.new("RGB", (6000, 2000), RED).save(path, quality=95)
    reduced = open_reduced(path, 1024)
    assert 1024 <= max(reduced.size) < 2048 and upright_size(path) == (2000, 6000)
    picture, grid = grid_preview(reduced, demo[1].image_processor, 1536, "preserve", size=upright_size(path))
    full_picture, full_grid = grid_preview(PIL.Image.open(path), demo[1].image_processor, 1536, "preserve")
    assert grid == full_grid and picture.size == full_picture.size == (512, 171)


def test_the_header_based_context_check_counts_the_prompt_the_processor_builds(demo, wide_image):
    _, processor = demo
    turns = [Turn("user", "Compare them.", [wide_image] * 14)]
    prompt = processor.apply_chat_template(chat_messages(turns), add_generation_prompt=True)
    images = [PIL.Image.open(wide_image)] * 14
    length = processor(images=images, text=prompt, return_tensors="pt", resolution=768)["input_ids"].shape[1]
    with pytest.raises(ValueError, match=f"the prompt is {length} tokens"):
        prepare_inputs(processor, turns, greedy(max_new_tokens=64), context_length=2048)
