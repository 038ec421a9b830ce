"""The Gradio page of `convllava-demo`: chat about images, see each image's visual tokens before sending."""

import functools
import html
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..cli.demo import DEMO_IMAGE, DEMO_MODE_NOTICE
from ..grounding import ASPECT_RATIO_MODES
from ..image_files import open_image, open_reduced, upright_size
from .conversation import AnswerProgress, GenerationSettings, Turn, prepare_inputs, stream_answer
from .grounding_picture import grounding_picture
from .token_grid import PREVIEW_SIDE, grid_preview

RESOLUTIONS = (768, 1024, 1536)
CSS = """
#demo-banner {background: #b91c1c; padding: 10px 16px; border-radius: 8px; font-weight: 600;}
#demo-banner, #demo-banner * {color: white !important;}
#token-count {font-size: 1.05em;}
#chat img {max-height: 240px; width: auto; object-fit: contain;}
"""
EMPTY_PREVIEW = "Attach an image: its visual-token count and 64-pixel grid show here before you send."
PREVIEW_CONCURRENCY = 2  # token previews decoded at once (each holds one decoded upload)
DELETE_CACHE = (3600, 86400)  # every hour, uploads and pictures older than a day are deleted (all of them at exit)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """One browser session's conversation: the turns the model reads and the chat messages the page shows."""

    turns: tuple[Turn, ...] = ()
    chat: tuple[dict, ...] = ()
    started: float = float("-inf")  # when the request that produced it arrived (`time.perf_counter()`)


class DemoApp:
    """The page's callbacks around one loaded model; each browser session's `Session` lives in a `gr.State`."""

    def __init__(self, model, processor, model_name: str | None):
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.context_length = model.config.text_config.max_position_embeddings
        self.default_resolution = processor.image_processor.resolution
        self.default_mode = processor.image_processor.image_aspect_ratio
        self._stop_events: dict[str, threading.Event] = {}
        self._cleared_at: dict[str, float] = {}  # per session: when Clear was last pressed
        self._grid_preview = functools.lru_cache(maxsize=128)(self._grid_preview)
        # grounding boxes drawn on images: made at the first one, removed when the server stops or at exit
        self.picture_dir = Path(tempfile.gettempdir()) / f"convllava-demo-{uuid.uuid4().hex}"
        weakref.finalize(self, shutil.rmtree, self.picture_dir, ignore_errors=True)

    # -- visual tokens, before sending ------------------------------------------------------------------------------

    def _grid_preview(self, path: str, resolution: int, image_aspect_ratio: str):
        """The token grid picture of an upload, decoded at about the preview's size (its grid from the header)."""
        name = repr(Path(path).name)
        size = upright_size(path, name)
        image = open_reduced(path, 2 * PREVIEW_SIDE, name)
        return grid_preview(image, self.processor.image_processor, resolution, image_aspect_ratio, size)

    def _settings(self, image_aspect_ratio: str | None, resolution: int | None) -> tuple[str, int]:
        """The page's mode and resolution; the processor's defaults for those an API call leaves out (None)."""
        resolution = self.default_resolution if resolution is None else int(resolution)
        return image_aspect_ratio or self.default_mode, resolution

    def preview(self, message: dict | None, image_aspect_ratio: str, resolution: int):
        """Gallery of each attached image with its token grid, and the token counts as text (no model run)."""
        paths = _file_paths(message)
        if not paths:
            return [], EMPTY_PREVIEW
        image_aspect_ratio, resolution = self._settings(image_aspect_ratio, resolution)
        pictures, lines, total = [], [], 0
        for index, path in enumerate(paths, start=1):
            try:
                picture, grid = self._grid_preview(path, resolution, image_aspect_ratio)
            except ValueError as error:
                lines.append(f"Image {index}: cannot be used ({error})")
                continue
            pictures.append((picture, f"Image {index}: {grid.cols}x{grid.rows} = {grid.tokens} visual tokens"))
            lines.append(f"Image {index}: {grid.describe()}")
            total += grid.tokens
        heading = f"**{total} visual tokens** at {resolution} px in {image_aspect_ratio} mode"
        return pictures, "\n\n".join([heading, *lines])

    def update_preview(self, message: dict | None, image_aspect_ratio: str, resolution: int, shown: tuple | None):
        """`preview`, unless only the message's text changed since the one shown (`shown` is kept per session)."""
        key = (tuple(_file_paths(message)), *self._settings(image_aspect_ratio, resolution))
        if key == shown:
            return gr.skip(), gr.skip(), shown
        return (*self.preview(message, image_aspect_ratio, resolution), key)

    # -- the conversation ---------------------------------------------------------------------------------------------

    def respond(
        self,
        message: dict | None,
        session: Session,
        image_aspect_ratio: str,
        resolution: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        request: gr.Request,
    ):
        """
        Add the user's message, stream the answer into the chat, then record both in the session's state. Bad input
        is refused with a message (the conversation stays as it was); a failed generation raises `gr.Error`.
        """
        started_at = time.perf_counter()
        session_hash = request.session_hash
        if session.started < self._cleared_at.get(session_hash, float("-inf")):
            session = Session()  # written by an answer that Clear interrupted
        text, paths = (message or {}).get("text", "").strip(), _file_paths(message)
        if not text:
            hint = f"Ask a question about the {len(paths)} attached image(s)." if paths else "Type a question first."
            yield _refusal(hint, session, message)
            return
        image_aspect_ratio, resolution = self._settings(image_aspect_ratio, resolution)
        settings = GenerationSettings(image_aspect_ratio, resolution, int(max_new_tokens), temperature, top_p)
        conversation = [*session.turns, Turn("user", text, paths)]
        try:
            inputs = prepare_inputs(self.processor, conversation, settings, self.context_length)
        except ValueError as error:
            yield _refusal(str(error), session, message)
            return
        visual_tokens = int((inputs["input_ids"] == self.processor.image_token_id).sum())
        prompt_tokens = inputs["input_ids"].shape[1]

        stop = threading.Event()
        self._stop_events[session_hash] = stop
        chat = [*session.chat, _user(text, paths)]
        busy = gr.MultimodalTextbox(value=None, interactive=False)
        ready = gr.MultimodalTextbox(value=None, interactive=True)
        yield [*chat, _assistant("")], gr.skip(), busy, "Generating..."
        try:
            for progress in stream_answer(self.model, self.processor, inputs, settings, stop, started_at):
                if self._cleared_since(session_hash, started_at):
                    break
                stats = _stats(progress, prompt_tokens, visual_tokens)
                yield [*chat, _assistant(progress.text)], gr.skip(), busy, stats
        except Exception as error:  # e.g. out of memory: the page and the session stay usable
            failure = f"Generation failed: {type(error).__name__}: {error}"
            yield list(session.chat), session, gr.MultimodalTextbox(value=message, interactive=True), failure
            raise gr.Error(failure) from error
        finally:
            self._stop_events.pop(session_hash, None)
        if self._cleared_since(session_hash, started_at):
            yield [], Session(), ready, ""
            return
        chat += [_assistant(progress.text), *self._grounding_box(conversation, progress.text, image_aspect_ratio)]
        session = Session((*conversation, Turn("assistant", progress.text)), tuple(chat), started_at)
        yield chat, session, ready, stats

    def _cleared_since(self, session_hash: str, started_at: float) -> bool:
        return self._cleared_at.get(session_hash, float("-inf")) > started_at

    def stop(self, request: gr.Request) -> None:
        """End this session's generation after the current token (the partial answer is kept)."""
        event = self._stop_events.get(request.session_hash)
        if event is not None:
            event.set()

    def clear(self, request: gr.Request):
        """Start over: an answer being generated stops, and whatever it still writes is discarded."""
        self._cleared_at[request.session_hash] = time.perf_counter()
        self.stop(request)
        return [], Session(), gr.MultimodalTextbox(value=None, interactive=True), "", [], EMPTY_PREVIEW

    def _grounding_box(self, conversation: list[Turn], answer: str, image_aspect_ratio: str) -> list[dict]:
        """The latest image with the answer's `[x1, y1, x2, y2]` box drawn on it, as a chat message (or nothing)."""
        paths = [path for turn in conversation for path in turn.images]
        picture = paths and grounding_picture(self.processor, answer, open_image(paths[-1]), image_aspect_ratio)
        if not picture:
            return []
        self.picture_dir.mkdir(exist_ok=True)
        path = self.picture_dir / f"{uuid.uuid4().hex}.png"
        picture.save(path)
        return [{"role": "assistant", "content": {"path": str(path), "alt_text": "the answer's box on the image"}}]

    # -- the page -----------------------------------------------------------------------------------------------------

    def build(self, concurrency_limit: int = 1) -> gr.Blocks:
        """
        The Blocks of the page; at most `concurrency_limit` answers are generated at once, others wait in line.
        Uploads are deleted after a day (`DELETE_CACHE`) and when the server stops.
        """
        resolutions = sorted({*RESOLUTIONS, self.default_resolution})
        with gr.Blocks(title="ConvLLaVA demo", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
            if self.model_name is None:
                gr.HTML(f"<div>{html.escape(DEMO_MODE_NOTICE)}</div>", elem_id="demo-banner")
            gr.Markdown(
                f"# ConvLLaVA: {model_display_name(self.model_name) if self.model_name else 'random demo model'}\n"
                "A hierarchical ConvNeXt reads the image with a total stride of 64: one visual token per 64x64 pixel "
                "cell, so a 1536 px image costs 576 tokens and *preserve* mode spends none on padding."
            )
            session = gr.State(Session())
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat")
                    message = gr.MultimodalTextbox(
                        file_types=["image"],
                        file_count="multiple",
                        placeholder="Attach one or more images and ask a question",
                        show_label=False,
                        elem_id="message",
                    )
                    with gr.Row():
                        stop_button = gr.Button("Stop", variant="stop", size="sm", elem_id="stop")
                        clear_button = gr.Button("Clear", size="sm", elem_id="clear")
                    stats = gr.Markdown(elem_id="stats")
                    gr.Examples([[{"text": "What is in this image?", "files": [str(DEMO_IMAGE)]}]], [message])
                with gr.Column(scale=2):
                    token_count = gr.Markdown(EMPTY_PREVIEW, elem_id="token-count")
                    previews = gr.Gallery(
                        label="What the vision tower sees: one cell = one visual token",
                        columns=2,
                        height=320,
                        object_fit="contain",
                        elem_id="token-grid",
                    )
                    mode = gr.Radio(list(ASPECT_RATIO_MODES), value=self.default_mode, label="Image mode")
                    resolution = gr.Radio(resolutions, value=self.default_resolution, label="Resolution (px)")
                    max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")

            shown_preview = gr.State(None)
            gr.on(
                [message.change, mode.change, resolution.change],
                self.update_preview,
                [message, mode, resolution, shown_preview],
                [previews, token_count, shown_preview],
                api_name="token_preview",
                concurrency_limit=PREVIEW_CONCURRENCY,
                concurrency_id="preview",
                show_progress="minimal",
            )
            chat_event = message.submit(
                self.respond,
                [message, session, mode, resolution, max_new_tokens, temperature, top_p],
                [chatbot, session, message, stats],
                api_name="chat",
                concurrency_limit=concurrency_limit,
                concurrency_id="generate",
            )
            stop_button.click(self.stop, None, None, api_name="stop", queue=False)
            clear_button.click(
                self.clear,
                None,
                [chatbot, session, message, stats, previews, token_count],
                api_name="clear",
                cancels=[chat_event],
                queue=False,
            )
        return demo

    def launch(self, host: str, port: int, max_file_size: str, concurrency_limit: int = 1) -> None:
        """Serve the page (blocking) with its queue; uploads over `max_file_size` are refused by Gradio."""
        try:
            self.build(concurrency_limit).queue().launch(
                server_name=host,
                server_port=port,
                max_file_size=max_file_size,
                allowed_paths=[str(DEMO_IMAGE), str(self.picture_dir)],
                show_error=True,
                css=CSS,
            )
        finally:
            shutil.rmtree(self.picture_dir, ignore_errors=True)


def model_display_name(model_id: str) -> str:
    """A Hub id as it is; a local folder by its own name, not its full path (often a temporary folder)."""
    folder = Path(model_id).expanduser()
    return folder.resolve().name if folder.is_dir() else model_id


def _refusal(reason: str, session: Session, message: dict | None) -> tuple:
    """The outputs of refused input: the conversation as it was, the message back to edit, and the reason (also a
    pop-up and one log line; no error state on the page)."""
    logger.warning("Refused a request: %s", reason)
    gr.Warning(reason)
    return list(session.chat), session, gr.MultimodalTextbox(value=message, interactive=True), f"**Not sent:** {reason}"


def _file_paths(message: dict | None) -> list[str]:
    files = (message or {}).get("files") or []
    return [file if isinstance(file, str) else file["path"] for file in files]


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": {"type": "text", "text": text}}


def _user(text: str, paths: list[str]) -> dict:
    """A user message as Gradio shows it: the images, then the text (kept verbatim, not re-indented)."""
    return {"role": "user", "content": [*({"path": path} for path in paths), {"type": "text", "text": text}]}


def _stats(progress: AnswerProgress, prompt_tokens: int, visual_tokens: int) -> str:
    parts = [f"prompt {prompt_tokens} tokens ({visual_tokens} visual)", f"{progress.new_tokens} new tokens"]
    if progress.time_to_first_token is not None:
        parts.insert(0, f"**time to first token {progress.time_to_first_token:.2f} s**")
    if progress.tokens_per_second is not None:
        parts.insert(1, f"**{progress.tokens_per_second:.1f} tokens/s**")
    if progress.stopped:
        parts.append("stopped")
    return " · ".join(parts)
