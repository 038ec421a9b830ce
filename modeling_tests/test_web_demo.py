"""
`convllava-demo` used as a person would: the server started on 127.0.0.1 with the demo model, driven through
`gradio_client` and then through a real headless Chromium (Selenium). Runs in `.ci/run`'s `.venv/demo`; skipped, with
the reason, where Gradio, gradio_client, Selenium or Debian's chromium/chromium-driver are missing.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("gradio", reason='Gradio is not installed (pip install "convllava-hf[demo]"); .ci/run has it')
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from convllava_hf.cli.demo import build_demo_model_and_processor  # noqa: E402

SERVER_START_S = 240
ANSWER_S = 180
MAX_IMAGE_PIXELS = 4_000_000  # passed to the server, so that a 2100x2100 image is "oversized"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo's URL, process and log file; the server runs with the random demo model and is stopped by its PID."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "convllava_hf.cli.web_demo", "--host", "127.0.0.1", "--port", str(port),
               "--max-image-pixels", str(MAX_IMAGE_PIXELS)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"convllava-demo exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"convllava-demo did not answer within {SERVER_START_S} s:\n{log_path.read_text()}")
            time.sleep(1)
        yield url, process, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def demo_model():
    return build_demo_model_and_processor()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    gradient = PIL.Image.linear_gradient("L").resize((320, 200)).convert("RGB")
    paths = {"photo": folder / "photo.png", "wide": folder / "wide.png", "huge": folder / "huge.png",
             "broken": folder / "broken.png"}
    gradient.save(paths["photo"])
    PIL.Image.new("RGB", (600, 200), (200, 30, 30)).save(paths["wide"])  # 3:1
    PIL.Image.new("RGB", (2100, 2100), (0, 90, 0)).save(paths["huge"])  # 4.41 M pixels
    paths["broken"].write_bytes(b"this is not a PNG")
    return {name: str(path) for name, path in paths.items()}


def _message(text: str, *paths: str) -> dict:
    return {"text": text, "files": [handle_file(path) for path in paths]}


def _chat(client: Client, message: dict, max_new_tokens: int = 16, mode: str = "pad", resolution: int = 768):
    """Every update the server streamed for one message (greedy decoding)."""
    job = client.submit(message, mode, resolution, max_new_tokens, 0.0, 1.0, api_name="/chat")
    job.result(timeout=ANSWER_S)
    return job.outputs()


def _text(chat_message: dict) -> str:
    return "".join(part["text"] for part in chat_message["content"] if part["type"] == "text")


def _greedy_answer(demo_model, messages: list[dict], image_path: str, max_new_tokens: int) -> str:
    """The package's own greedy `generate` on the same demo model, prompt and image."""
    model, processor = demo_model
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=PIL.Image.open(image_path), text=prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_two_turn_exchange_streams_the_answers_of_greedy_generate_and_clear_starts_over(server, images, demo_model):
    client = Client(server[0], verbose=False)
    question = "What is in this image?"
    updates = _chat(client, _message(question, images["photo"]))
    history, message_box, stats = updates[-1]
    first_answer = _greedy_answer(
        demo_model, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        images["photo"], 16,
    )
    assert [entry["role"] for entry in history] == ["user", "assistant"]
    assert history[0]["content"][0]["type"] == "file" and _text(history[0]) == question
    assert _text(history[1]) == first_answer
    partial_answers = [_text(update[0][-1]) for update in updates[:-1] if update[0][-1]["role"] == "assistant"]
    assert len(set(partial_answers)) > 2 and all(first_answer.startswith(text) for text in partial_answers)
    assert "time to first token" in stats and "tokens/s" in stats and "(144 visual)" in stats
    assert message_box["value"] == {"text": "", "files": []}

    follow_up = "And what colour is it?"
    history = _chat(client, _message(follow_up))[-1][0]
    second_answer = _greedy_answer(
        demo_model,
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
         {"role": "assistant", "content": [{"type": "text", "text": first_answer}]},
         {"role": "user", "content": [{"type": "text", "text": follow_up}]}],
        images["photo"], 16,
    )
    assert [_text(entry) for entry in history[1:]] == [first_answer, follow_up, second_answer]

    assert client.predict(api_name="/clear")[0] == []
    history = _chat(client, _message(question, images["photo"]))[-1][0]
    assert [_text(entry) for entry in history] == [question, first_answer]  # the model no longer sees the old turns


@pytest.mark.parametrize(("mode", "expected"), [("pad", "24x24 = 576"), ("preserve", "24x8 = 192")])
def test_visual_tokens_of_a_3_to_1_image_update_before_sending(server, images, mode, expected):
    # 600x200 at 1536: pad fills the 1536x1536 canvas (24x24 cells of 64 px); preserve scales it to 1536x512 (24x8)
    client = Client(server[0], verbose=False)
    gallery, counts = client.predict(_message("", images["wide"]), mode, 1536, api_name="/token_preview")
    assert f"**{expected.split()[-1]} visual tokens** at 1536 px in {mode} mode" in counts
    assert f"Image 1: 600x200 px -> {expected} visual tokens" in counts
    assert len(gallery) == 1 and gallery[0]["caption"] == f"Image 1: {expected} visual tokens"


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("broken", "Image 1 cannot be used: Could not decode an image from 'broken.png'"),
        ("huge", "Image 1 cannot be used: Refusing to decode 'huge.png'"),
        ("no question", "Ask a question about the 1 attached image(s)"),
        ("too many images", "Too much for the model: 15 image(s) take 2160 visual tokens at 768 px in pad mode"),
    ],
)
def test_bad_input_gets_a_message_and_the_server_keeps_running(server, images, case, error):
    url, process, _ = server
    client = Client(url, verbose=False)
    message = {
        "broken": _message("What is it?", images["broken"]),
        "huge": _message("What is it?", images["huge"]),
        "no question": _message("  ", images["photo"]),
        "too many images": _message("Compare them.", *[images["photo"]] * 15),
    }[case]
    history, message_box, stats = _chat(client, message)[-1]  # a refusal is an answer, not an error
    assert history == [] and stats.startswith("**Not sent:**") and error in stats
    assert message_box["value"]["text"] == message["text"] and len(message_box["value"]["files"]) == len(
        message["files"]
    )
    assert "/gradio/" not in stats  # the upload's name, not Gradio's cache path
    assert process.poll() is None
    assert _text(_chat(client, _message("Still there?", images["photo"]), max_new_tokens=2)[-1][0][-1])


def test_refusals_are_logged_in_one_line_without_a_traceback(server, images):
    url, _, log_path = server
    before = log_path.read_text()
    _chat(Client(url, verbose=False), _message("What is it?", images["broken"]))
    added = log_path.read_text()[len(before) :]
    assert "Traceback" not in added
    assert [line for line in added.splitlines() if "Refused a request" in line] == [
        line for line in added.splitlines() if "broken.png" in line
    ]
    assert len([line for line in added.splitlines() if "Refused a request" in line]) == 1


def _wait_for_streaming(job, deadline_s: float = ANSWER_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not any(len(update[0]) == 2 and _text(update[0][-1]) for update in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "no streamed token arrived"
        time.sleep(0.05)


def test_stop_interrupts_generation_and_keeps_the_partial_answer(server, images):
    client = Client(server[0], verbose=False)
    job = client.submit(_message("Describe it.", images["photo"]), "pad", 768, 1024, 0.0, 1.0, api_name="/chat")
    _wait_for_streaming(job)
    client.predict(api_name="/stop")
    history, _, stats = job.result(timeout=ANSWER_S)
    new_tokens = int(stats.split(" new tokens")[0].split()[-1])
    assert "stopped" in stats and 0 < new_tokens < 1024
    assert _text(history[-1])


def test_a_second_user_waits_in_the_queue_and_gets_a_separate_conversation(server, images):
    first, second = Client(server[0], verbose=False), Client(server[0], verbose=False)
    first_job = first.submit(_message("Question of first", images["photo"]), "pad", 768, 1024, 0.0, 1.0,
                             api_name="/chat")
    _wait_for_streaming(first_job)
    second_job = second.submit(_message("Question of second", images["photo"]), "pad", 768, 8, 0.0, 1.0,
                               api_name="/chat")
    deadline = time.monotonic() + 30
    while second_job.status().code != Status.IN_QUEUE:
        assert time.monotonic() < deadline, f"second request never queued: {second_job.status()}"
        time.sleep(0.05)
    time.sleep(1.0)
    assert second_job.status().code == Status.IN_QUEUE and not second_job.done() and not first_job.done()

    first.predict(api_name="/stop")  # stops the first user's answer only
    first_history, _, first_stats = first_job.result(timeout=ANSWER_S)
    second_history, _, second_stats = second_job.result(timeout=ANSWER_S)
    assert "stopped" in first_stats and "stopped" not in second_stats and "8 new tokens" in second_stats
    assert [_text(entry) for entry in first_history[::2]] == ["Question of first"]
    assert [_text(entry) for entry in second_history[::2]] == ["Question of second"]
    history = _chat(second, _message("Again"), max_new_tokens=2)[-1][0]
    assert [_text(entry) for entry in history[::2]] == ["Question of second", "Again"]


def test_a_grounding_answer_shows_its_box_on_the_original_image(demo_model, monkeypatch, tmp_path):
    """The page's wiring of `post_process_grounding`, with the model's answer scripted (a random model draws none)."""
    from convllava_hf.web import app as web_app
    from convllava_hf.web.conversation import AnswerProgress
    from convllava_hf.web.grounding_picture import BOX_COLOUR

    answer = "It is here: [0.25, 0.375, 0.75, 0.625]"

    def scripted_answer(model, processor, inputs, settings, stop, started_at):
        yield AnswerProgress(text=answer, new_tokens=12, done=True)

    monkeypatch.setattr(web_app, "stream_answer", scripted_answer)
    image_path = tmp_path / "wide.png"
    PIL.Image.new("RGB", (400, 200), (0, 0, 0)).save(image_path)
    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    message = {"text": "Where is the dog?", "files": [str(image_path)]}
    updates = demo_app.respond(message, web_app.Session(), "pad", 768, 8, 0.0, 1.0, SimpleNamespace(session_hash="a"))
    chat, session, _, _ = list(updates)[-1]

    assert [entry["role"] for entry in chat] == ["user", "assistant", "assistant"]
    assert chat[1]["content"]["text"] == answer and session.turns[-1].text == answer and session.chat == tuple(chat)
    with PIL.Image.open(chat[2]["content"]["path"]) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    # pad mode: the box is relative to the 400x400 square, whose content starts 100 px down: x 100..300, y 50..150
    assert pixels.shape == (200, 400, 3)
    assert tuple(pixels[100, 100]) == BOX_COLOUR and tuple(pixels[50, 200]) == BOX_COLOUR
    assert tuple(pixels[100, 200]) == (0, 0, 0) and tuple(pixels[45, 200]) == (0, 0, 0)


def test_a_failed_generation_gives_the_message_back_and_keeps_the_conversation(demo_model, monkeypatch):
    import gradio as gr

    from convllava_hf.web import app as web_app
    from convllava_hf.web.conversation import AnswerProgress

    def failing_answer(model, processor, inputs, settings, stop, started_at):
        yield AnswerProgress(text="Partial")
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(web_app, "stream_answer", failing_answer)
    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    earlier = web_app.Session(turns=(web_app.Turn("user", "Hi"), web_app.Turn("assistant", "Hello")),
                              chat=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}))
    message = {"text": "And now?", "files": []}
    updates = demo_app.respond(message, earlier, "pad", 768, 8, 0.0, 1.0, SimpleNamespace(session_hash="b"))
    seen = []
    with pytest.raises(gr.Error, match="Generation failed: RuntimeError: CUDA out of memory"):
        for update in updates:
            seen.append(update)
    chat, session, message_box, stats = seen[-1]
    assert session is earlier and chat == list(earlier.chat) and stats.startswith("Generation failed")
    assert message_box.value == message and message_box.interactive


def test_a_refusal_keeps_the_conversation_and_raises_no_error(demo_model, images, caplog):
    from convllava_hf.web import app as web_app

    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    earlier = web_app.Session(turns=(web_app.Turn("user", "Hi"), web_app.Turn("assistant", "Hello")),
                              chat=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}))
    message = {"text": "What is it?", "files": [images["broken"]]}
    with caplog.at_level("WARNING", logger="convllava_hf.web.app"), pytest.warns(UserWarning, match="broken.png"):
        updates = list(demo_app.respond(message, earlier, "pad", 768, 8, 0.0, 1.0, SimpleNamespace(session_hash="r")))
    (chat, session, message_box, stats), = updates
    assert chat == list(earlier.chat) and session is earlier
    assert message_box.value["text"] == message["text"] and message_box.interactive
    assert [file["orig_name"] for file in message_box.value["files"]] == ["broken.png"]
    assert stats.startswith("**Not sent:** Image 1 cannot be used: Could not decode an image from 'broken.png'")
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.exc_info is None and "broken.png" in record.getMessage()


def test_clear_pressed_while_an_answer_streams_starts_the_next_question_afresh(demo_model, images):
    from convllava_hf.web import app as web_app

    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    request = SimpleNamespace(session_hash="clear-while-streaming")
    message = {"text": "Describe it.", "files": [images["photo"]]}
    streaming = demo_app.respond(message, web_app.Session(), "pad", 768, 400, 0.0, 1.0, request)
    next(streaming), next(streaming)  # the answer has started
    demo_app.clear(request)
    written = [update[1] for update in streaming if isinstance(update[1], web_app.Session)]  # what still arrives
    session = written[-1] if written else web_app.Session()
    chat, session, _, stats = list(demo_app.respond({"text": "Next?", "files": []}, session, "pad", 768, 2, 0.0, 1.0,
                                                    request))[-1]
    assert "(0 visual)" in stats and len(chat) == 2 and _text(chat[0]) == "Next?"
    assert [turn.text for turn in session.turns[::2]] == ["Next?"]


def test_an_api_call_without_mode_or_resolution_uses_the_processors(demo_model, images):
    from convllava_hf.web import app as web_app

    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    resolution = demo_model[1].image_processor.resolution
    message = {"text": "What is it?", "files": [images["photo"]]}
    request = SimpleNamespace(session_hash="n")
    *_, (_, _, _, stats) = demo_app.respond(message, web_app.Session(), None, None, 2, 0.0, 1.0, request)
    tokens = (resolution // 64) ** 2
    assert f"({tokens} visual)" in stats
    assert f"**{tokens} visual tokens** at {resolution} px in pad mode" in demo_app.preview(message, None, None)[1]


def test_the_title_names_the_model_not_its_local_path(demo_model, tmp_path):
    from convllava_hf.web import app as web_app

    folder = tmp_path / "tmpk2x9" / "convllava-768"
    folder.mkdir(parents=True)
    page = web_app.DemoApp(*demo_model, model_name=str(folder)).build()
    titles = [block.value for block in page.blocks.values() if getattr(block, "value", None) and "# ConvLLaVA" in
              str(block.value)]
    assert titles and titles[0].startswith("# ConvLLaVA: convllava-768\n") and str(tmp_path) not in titles[0]
    assert web_app.model_display_name("org/convllava-1536") == "org/convllava-1536"


def test_the_page_deletes_uploads_bounds_previews_and_leaves_no_temporary_folder(demo_model, tmp_path, monkeypatch):
    import gradio as gr

    from convllava_hf.web import app as web_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda page, **kwargs: launched.update(kwargs, page=page))
    demo_app = web_app.DemoApp(*demo_model, model_name=None)
    assert list(tmp_path.glob("convllava-demo-*")) == []  # nothing made for a start
    image = tmp_path / "dog.png"
    PIL.Image.new("RGB", (400, 200)).save(image)
    (drawn,) = demo_app._grounding_box([web_app.Turn("user", "Where?", [str(image)])], "[0.1, 0.1, 0.5, 0.5]", "pad")
    assert Path(drawn["content"]["path"]).parent.name.startswith("convllava-demo-")

    demo_app.launch("127.0.0.1", 0, "5mb")  # returns at once here, as when the server stops
    assert list(tmp_path.glob("convllava-demo-*")) == []  # the pictures go with the server
    assert launched["page"].delete_cache and all(value > 0 for value in launched["page"].delete_cache)
    (preview,) = [fn for fn in launched["page"].fns.values() if fn.api_name == "token_preview"]
    assert preview.concurrency_limit == web_app.PREVIEW_CONCURRENCY


@pytest.fixture(scope="module")
def chromium_driver():
    """
    Selenium's webdriver module and Debian's chromium and chromedriver paths, or a skip naming what is missing
    (module-scoped and requested first, so that the skip comes before the server starts).
    """
    webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (pip install selenium)")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium-driver)")
    return webdriver, browser, driver


def _chromium(webdriver, browser: str, driver: str):
    """A headless Chromium driven by Selenium."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    chrome.set_page_load_timeout(60)
    return chrome


def test_the_page_in_a_browser_shows_the_token_count_and_refuses_without_error_badges(
    chromium_driver, server, images, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chromium(*chromium_driver)
    try:
        browser.get(server[0])
        wait = WebDriverWait(browser, 60)
        banner = wait.until(lambda page: page.find_element(By.ID, "demo-banner"))
        assert banner.is_displayed() and "RANDOM weights" in banner.text
        upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#message button.upload-button"))
        assert upload.is_displayed()
        browser.find_element(By.CSS_SELECTOR, "#message input[type=file]").send_keys(images["wide"])
        counts = wait.until(lambda page: page.find_element(By.ID, "token-count") if "144 visual tokens at 768 px"
                            in page.find_element(By.ID, "token-count").text else None)
        assert counts.is_displayed() and "600x200 px -> 12x12 = 144 visual tokens" in counts.text
        browser.find_element(By.XPATH, "//label[.//span[text()='preserve']]").click()
        wait.until(lambda page: "48 visual tokens at 768 px in preserve mode" in counts.text)
        screenshot = tmp_path / "page.png"

        browser.find_element(By.CSS_SELECTOR, "#message textarea").send_keys(Keys.ENTER)  # an image, no question
        stats = wait.until(lambda page: page.find_element(By.ID, "stats") if "Not sent" in
                           page.find_element(By.ID, "stats").text else None)
        assert "Ask a question about the 1 attached image(s)" in stats.text
        time.sleep(1)
        badges = [badge for badge in browser.find_elements(By.CSS_SELECTOR, ".error") if badge.is_displayed()]
        assert [badge.text for badge in badges] == []  # no red "Error" over the conversation, input or stats
        assert browser.save_screenshot(str(screenshot))
    finally:
        browser.quit()
    with PIL.Image.open(screenshot) as picture:
        assert picture.size == (1400, 1000) or picture.width >= 1000
        colours = np.unique(np.asarray(picture.convert("RGB").resize((64, 64))).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # a rendered page, not a blank one


def test_the_browser_test_skips_naming_selenium_where_gradio_is_installed_but_selenium_is_not(tmp_path):
    shadow = tmp_path / "selenium"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'selenium'\", name='selenium')\n")
    test = f"{__file__}::test_the_page_in_a_browser_shows_the_token_count_and_refuses_without_error_badges"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert "1 skipped" in finished.stdout and "Selenium is not installed" in finished.stdout
