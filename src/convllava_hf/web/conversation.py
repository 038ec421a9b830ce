"""A multi-turn conversation with images, checked against the model's context, and its answer streamed."""

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from transformers import StoppingCriteria

from ..image_files import open_image, upright_size
from ..streamers import TimedTextIteratorStreamer


@dataclass
class Turn:
    """One message: the user's images (file paths, shown before the text) and text, or the assistant's answer."""

    role: str
    text: str
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationSettings:
    """The page's controls. `temperature` 0 means greedy decoding (and `top_p` is then unused)."""

    image_aspect_ratio: str
    resolution: int
    max_new_tokens: int
    temperature: float
    top_p: float

    def generate_kwargs(self) -> dict:
        sampling = {"do_sample": False}
        if self.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        return {"max_new_tokens": self.max_new_tokens, **sampling}


@dataclass
class AnswerProgress:
    """The answer so far and its timings (seconds; `None` until known)."""

    text: str
    new_tokens: int = 0
    time_to_first_token: float | None = None
    tokens_per_second: float | None = None
    stopped: bool = False
    done: bool = False


def chat_messages(turns: list[Turn]) -> list[dict]:
    """The conversation in transformers' chat format, each user turn's images before its text."""
    messages = []
    for turn in turns:
        content = [{"type": "image"} for _ in turn.images]
        messages.append({"role": turn.role, "content": [*content, {"type": "text", "text": turn.text}]})
    return messages


def _images(turns: list[Turn]) -> list[tuple[str, str]]:
    """(path, how messages name it) of each image: its place in its message, as the side panel numbers it."""
    named = []
    for position, turn in enumerate(turns):
        earlier = " of an earlier message" if position < len(turns) - 1 else ""
        named += [(path, f"Image {index}{earlier}") for index, path in enumerate(turn.images, 1)]
    return named


def _file_name(path: str) -> str:
    """How errors name an upload: its file name, which Gradio keeps in its cache path, not that path."""
    return repr(Path(path).name)


def _read_images(turns: list[Turn], read: Callable) -> list:
    """`read(path, name=...)` of each of the conversation's image files; a `ValueError` names the image it is about."""
    results = []
    for path, label in _images(turns):
        try:
            results.append(read(path, name=_file_name(path)))
        except ValueError as error:
            raise ValueError(f"{label} cannot be used: {error}") from error
    return results


def open_images(turns: list[Turn]) -> list[PIL.Image.Image]:
    """Decode the conversation's image files, raising `ValueError` that names the unreadable or oversized one."""
    return _read_images(turns, open_image)


def check_question(text: str, image_token: str) -> None:
    """Refuse a question holding the image placeholder as text: the processor would count it as one more image."""
    if image_token in text:
        raise ValueError(
            f"The question contains the text {image_token!r}, which the model reserves for the place of an image; "
            "attach images as files and rephrase the question without it."
        )


def _check_context(prompt_length: int, visual: int, images: int, settings: GenerationSettings, context_length: int):
    if prompt_length + settings.max_new_tokens > context_length:
        raise ValueError(
            f"Too much for the model: {images} image(s) take {visual} visual tokens at {settings.resolution} px "
            f"in {settings.image_aspect_ratio} mode, the prompt is {prompt_length} tokens, and {prompt_length} + "
            f"{settings.max_new_tokens} new tokens exceed the model's context of {context_length} tokens. "
            "Use fewer images, preserve mode, a lower resolution or fewer new tokens, or press Clear."
        )


def prepare_inputs(processor, turns: list[Turn], settings: GenerationSettings, context_length: int):
    """
    The model inputs of a conversation ending with a user turn. Raises `ValueError` when a question holds the image
    placeholder, when an image cannot be read, or when the prompt leaves no room in `context_length` tokens for
    `max_new_tokens` new ones; the context is checked from the images' headers, before any pixel is decoded.
    """
    for turn in turns:
        if turn.role == "user":
            check_question(turn.text, processor.image_token)
    sizes = _read_images(turns, upright_size)
    image_processor = processor.image_processor
    visual = sum(
        image_processor.num_image_tokens(height, width, settings.resolution, settings.image_aspect_ratio)
        for height, width in sizes
    )
    prompt = processor.apply_chat_template(chat_messages(turns), add_generation_prompt=True)
    text_tokens = len(processor.tokenizer(prompt)["input_ids"]) - len(sizes)  # each <image> is one token
    _check_context(text_tokens + visual, visual, len(sizes), settings, context_length)
    images = open_images(turns)
    inputs = processor(
        images=images or None,
        text=prompt,
        return_tensors="pt",
        resolution=settings.resolution,
        image_aspect_ratio=settings.image_aspect_ratio,
    )
    visual = int((inputs["input_ids"] == processor.image_token_id).sum())
    _check_context(inputs["input_ids"].shape[1], visual, len(images), settings, context_length)
    return inputs


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(
    model,
    processor,
    inputs,
    settings: GenerationSettings,
    stop: threading.Event,
    started_at: float,
    token_timeout: float = 600.0,
) -> Iterator[AnswerProgress]:
    """
    Generate in a background thread and yield the answer each time `TextIteratorStreamer` hands on a token (and
    once at the end); the last progress (`done`) holds the answer decoded from the ids `generate` returned. Setting
    `stop`, or closing the iterator, ends generation after the current token. Timings count from `started_at` (a
    `time.perf_counter()` value taken when the request arrived); `token_timeout` seconds without a token raise
    `queue.Empty`.
    """
    streamer = TimedTextIteratorStreamer(processor.tokenizer, timeout=token_timeout, skip_special_tokens=True)
    outcome: dict = {}
    inputs = inputs.to(model.device)

    def generate() -> None:
        try:
            with torch.inference_mode():
                outcome["ids"] = model.generate(
                    **inputs, streamer=streamer, stopping_criteria=[_StopWhenSet(stop)], **settings.generate_kwargs()
                )
        except Exception as error:  # re-raised in the caller's thread
            outcome["error"] = error
            streamer.end()

    worker = threading.Thread(target=generate, name="convllava-generate", daemon=True)
    worker.start()
    progress = AnswerProgress(text="")
    try:
        for _ in streamer:  # one item per token; the text shown is the answer's ids decoded so far, since the
            # streamer holds back text after a punctuation mark until the next space (a whole word-less answer)
            progress.text = processor.decode(list(streamer.token_ids), skip_special_tokens=True)
            _update_timings(progress, streamer, started_at)
            yield progress
        worker.join()
        progress.stopped = stop.is_set()
    finally:
        stop.set()
    if "error" in outcome:
        raise outcome["error"]
    prompt_length = inputs["input_ids"].shape[1]
    progress.text = processor.decode(outcome["ids"][0, prompt_length:], skip_special_tokens=True)
    _update_timings(progress, streamer, started_at)
    progress.done = True
    yield progress


def _update_timings(progress: AnswerProgress, streamer: TimedTextIteratorStreamer, started_at: float) -> None:
    progress.new_tokens = len(streamer.token_times)
    progress.time_to_first_token, progress.tokens_per_second = streamer.timings(started_at)
