"""
`transformers serve` (the `transformers[serving]` extra) serves a stock-layout (`fast_vlm`) ConvLLaVA folder in a
process where `convllava_hf` cannot be imported, and its OpenAI chat completion with a base64 image equals greedy
`generate` of the stock classes and the original's greedy ids. `.ci/run` runs this file in `.venv/serve`.
"""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

pytest.importorskip("fastapi", reason="the transformers[serving] extra is missing; .ci/run runs this in .venv/serve")
pytest.importorskip("uvicorn", reason="the transformers[serving] extra is missing; .ci/run runs this in .venv/serve")

from converted_tiny import convert_original_tiny  # noqa: E402
from local_server import free_port, post_json, stop, wait_until_healthy  # noqa: E402
from tiny_models import FIXTURE_DIR  # noqa: E402

SERVER_START_TIMEOUT_S = 240
CASES = {case["name"]: case for case in json.loads((FIXTURE_DIR / "reference" / "cases.json").read_text())["cases"]}
SERVED_CASES = ["case0", "case1"]  # the landscape and the portrait image, one question each
MAX_NEW_TOKENS = 8  # the original's reference generation length


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory) -> Path:
    return convert_original_tiny(tmp_path_factory.mktemp("serve") / "convllava-tiny-stock", layout="fast_vlm")


def messages(case: dict, image_url: str | None = None) -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": image_url}} if image_url else {"type": "image"}
    return [{"role": "user", "content": [image, {"type": "text", "text": case["question"]}]}]


@pytest.fixture(scope="module")
def stock_generate(stock_folder) -> dict[str, tuple[int, list[int]]]:
    """(prompt length, greedy new ids) per case from `generate` of the stock classes."""
    processor = transformers.AutoProcessor.from_pretrained(stock_folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(stock_folder).eval()
    assert type(model) is transformers.FastVlmForConditionalGeneration
    results = {}
    for name in SERVED_CASES:
        image = transformers.image_utils.load_image(str(FIXTURE_DIR / "images" / CASES[name]["image"]))
        prompt = processor.apply_chat_template(messages(CASES[name]), add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        length = inputs["input_ids"].shape[1]
        results[name] = (length, output[0, length:].tolist())
    return results


@pytest.fixture(scope="module")
def served_replies(stock_folder, tmp_path_factory) -> dict[str, dict]:
    """One `transformers serve` run, blocked from `convllava_hf`, answering every case; stopped by its PID."""
    port = free_port()
    blocked_run = Path(__file__).with_name("blocked_run.py")
    command = [
        sys.executable, str(blocked_run), "transformers.cli.transformers", "serve", str(stock_folder),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "info",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("serve_log") / "transformers_serve.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    replies = {}
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/health", log, SERVER_START_TIMEOUT_S)
        for name in SERVED_CASES:
            png = (FIXTURE_DIR / "images" / CASES[name]["image"]).read_bytes()
            image_url = "data:image/png;base64," + base64.b64encode(png).decode()
            body = {
                "model": str(stock_folder), "messages": messages(CASES[name], image_url),
                "temperature": 0.0, "max_tokens": MAX_NEW_TOKENS,
            }  # fmt: skip
            replies[name] = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", body)
    finally:
        stop(server)
    assert "convllava_hf" not in log.read_text()
    return replies


@pytest.mark.parametrize("name", SERVED_CASES)
def test_served_chat_reply_with_base64_image_equals_stock_generate_and_the_original(
    stock_folder, stock_generate, served_replies, name
):
    tokenizer = transformers.AutoTokenizer.from_pretrained(stock_folder)
    prompt_length, generated = stock_generate[name]
    assert generated == CASES[name]["generated_ids"]  # the stock classes reproduce the original's greedy ids
    reply = served_replies[name]
    assert reply["usage"] == {
        "prompt_tokens": prompt_length, "completion_tokens": MAX_NEW_TOKENS,
        "total_tokens": prompt_length + MAX_NEW_TOKENS,
    }  # fmt: skip
    assert reply["choices"][0]["message"]["content"] == tokenizer.decode(generated, skip_special_tokens=True)
