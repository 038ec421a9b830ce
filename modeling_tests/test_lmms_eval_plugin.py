"""
The `convllava` lmms-eval model end to end and offline: tiny tasks built here (generated images saved as local
datasets, task YAMLs loaded with `--include_path`) run through lmms-eval's real command line on the converted
original-tiny fixture. Every recorded answer must equal plain `generate` on the same prompt and image, every recorded
log-likelihood a hand computation, and every reported metric the metric computed by hand from the recorded answers.

Needs lmms-eval, which lives in its own environment: `.ci/run` builds `.venv/lmms` and runs this file there.
"""

import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here; .ci/run runs this test in .venv/lmms")

import datasets  # noqa: E402  (comes with lmms-eval)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import convllava_hf  # noqa: E402,F401  (registers the Auto classes)
from converted_tiny import REPO_ROOT, convert_original_tiny, vicuna_prompt  # noqa: E402

YESNO_SUFFIX = "\nAnswer the question using a single word or phrase."  # MME's and POPE's post_prompt
MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."  # SEED-Bench's
YESNO_MAX_NEW_TOKENS = 6
MC_MAX_NEW_TOKENS = 3
# the question pairs of MME (one "yes" and one "no" question per image) in perception categories
YESNO_QUESTIONS = [
    ("existence", "Is there a red square in the image?", "yes", "Is there a dog in the image?", "no"),
    ("color", "Is the background blue?", "no", "Is the background green?", "yes"),
    ("count", "Are there two squares in the image?", "yes", "Are there five squares in the image?", "no"),
]
MC_QUESTIONS = [
    ("What shape is in the image?", ["circle", "square", "triangle", "star"], True),
    ("What colour is the square?", ["red", "green", "blue", "white"], True),
    ("What is the capital of France?", ["Berlin", "Madrid", "Paris", "Rome"], False),  # a text-only document
    ("Which side is the square on?", ["left", "right", "top", "bottom"], True),
]

TASK_UTILS = """
from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_process_results
from lmms_eval.tasks.pope.utils import pope_aggregate_accuracy, pope_aggregate_yes_ratio, pope_process_results
from lmms_eval.tasks.seedbench.utils import seed_aggregation_result, seed_process_result

YESNO_SUFFIX = {yesno_suffix!r}
MC_SUFFIX = {mc_suffix!r}


def doc_to_visual(doc):
    return [] if doc["image"] is None else [doc["image"].convert("RGB")]


def yesno_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + YESNO_SUFFIX


def yesno_process_results(doc, results):
    return {{**mme_process_results(doc, results), **pope_process_results(doc, results)}}


def mc_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "".join(f"\\n{{letter}}. {{choice}}" for letter, choice in zip("ABCD", doc["choices"]))
    return doc["question"] + options + MC_SUFFIX


def mc_doc_to_choice(doc):
    return list(doc["choices"])


def mc_doc_to_target(doc):
    return doc["gold_index"]
"""

YESNO_YAML = """
task: convllava_tiny_yesno
dataset_path: {root}/yesno
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.yesno_doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function utils.yesno_process_results
metric_list:
  - metric: mme_perception_score
    aggregation: !function utils.mme_aggregate_results
    higher_is_better: true
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
    higher_is_better: true
  - metric: pope_yes_ratio
    aggregation: !function utils.pope_aggregate_yes_ratio
    higher_is_better: true
"""

MC_YAML = """
task: convllava_tiny_mc
dataset_path: {root}/mc
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.mc_doc_to_text
doc_to_target: answer
generation_kwargs:
  until:
    - "ASSISTANT:"
  max_new_tokens: {max_new_tokens}
  image_aspect_ratio: original
process_results: !function utils.seed_process_result
metric_list:
  - metric: seed_all
    aggregation: !function utils.seed_aggregation_result
    higher_is_better: true
"""

PPL_YAML = """
task: convllava_tiny_mc_ppl
dataset_path: {root}/mc
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.mc_doc_to_text
doc_to_choice: !function utils.mc_doc_to_choice
doc_to_target: !function utils.mc_doc_to_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def make_images() -> list[Image.Image]:
    """A landscape, a portrait and a square picture: noise with a red square."""
    rng = np.random.default_rng(0)
    images = []
    for height, width in [(96, 160), (160, 96), (128, 128)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[10:40, 20:50] = (220, 30, 30)
        images.append(Image.fromarray(pixels))
    return images


def reference_answer(model, processor, question: str, image: Image.Image | None, max_new_tokens: int, until: list[str]):
    """Plain `generate` on the hand-written Vicuna prompt, cut at the first stop string."""
    inputs = processor(images=image, text=vicuna_prompt(question, with_image=image is not None), return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    answer = processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    for stop in until:
        answer = answer.split(stop)[0]
    return answer.strip()


def reference_loglikelihood(model, processor, question: str, image: Image.Image | None, choice: str) -> float:
    """log P(choice | prompt) as the assistant's reply, from one forward pass over prompt + reply."""
    inputs = processor(images=image, text=vicuna_prompt(question, with_image=image is not None), return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    full = processor(images=image, text=vicuna_prompt(question, image is not None) + " " + choice, return_tensors="pt")
    assert torch.equal(full["input_ids"][0, :prompt_length], inputs["input_ids"][0])  # the split is a token boundary
    with torch.no_grad():
        logits = model(**full).logits[0].double()
    targets = full["input_ids"][0, prompt_length:]
    return float(torch.log_softmax(logits[prompt_length - 1 : -1], dim=-1).gather(1, targets[:, None]).sum())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The converted model, the tiny datasets and task folder, and the references computed with plain transformers."""
    root = tmp_path_factory.mktemp("lmms")
    model_dir = convert_original_tiny(root / "convllava-tiny")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    images = make_images()

    yesno_rows, yesno_reference = [], []
    for (category, yes_question, yes_answer, no_question, no_answer), image in zip(YESNO_QUESTIONS, images):
        for question, answer in [(yes_question, yes_answer), (no_question, no_answer)]:
            yesno_rows.append({"question_id": f"{category}.png", "category": category, "question": question,
                               "answer": answer, "image": image})  # fmt: skip
            yesno_reference.append(
                reference_answer(model, processor, question + YESNO_SUFFIX, image, YESNO_MAX_NEW_TOKENS, ["\n\n"])
            )

    mc_rows, mc_reference, mc_loglikelihoods = [], [], []
    for index, (question, choices, has_image) in enumerate(MC_QUESTIONS):
        image = images[index % len(images)] if has_image else None
        prompt = question + "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", choices)) + MC_SUFFIX
        answer = reference_answer(model, processor, prompt, image, MC_MAX_NEW_TOKENS, ["ASSISTANT:"])
        mc_reference.append(answer)
        mc_loglikelihoods.append([reference_loglikelihood(model, processor, prompt, image, c) for c in choices])
        # Random weights answer gibberish: the gold letter of even documents is set to the answer's first character
        # and that of odd ones to another character, so that the scoring has hits and misses to count.
        first = (answer[:1] or "?").upper()
        gold = first if index % 2 == 0 else ("Q" if first != "Q" else "Z")
        mc_rows.append({"question_id": str(index), "data_type": "image", "question": question, "choices": choices,
                        "answer": gold, "gold_index": index % 4, "image": image})  # fmt: skip

    text, image = datasets.Value("string"), datasets.Image()
    features = {
        "yesno": datasets.Features(
            {"question_id": text, "category": text, "question": text, "answer": text, "image": image}
        ),
        "mc": datasets.Features(
            {"question_id": text, "data_type": text, "question": text, "choices": datasets.Sequence(text),
             "answer": text, "gold_index": datasets.Value("int64"), "image": image}
        ),
    }  # fmt: skip
    for name, rows in [("yesno", yesno_rows), ("mc", mc_rows)]:
        dataset = datasets.Dataset.from_list(rows, features=features[name])
        datasets.DatasetDict({"test": dataset}).save_to_disk(str(root / name))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS.format(yesno_suffix=YESNO_SUFFIX, mc_suffix=MC_SUFFIX))
    (tasks / "tiny_yesno.yaml").write_text(YESNO_YAML.format(root=root, max_new_tokens=YESNO_MAX_NEW_TOKENS))
    (tasks / "tiny_mc.yaml").write_text(MC_YAML.format(root=root, max_new_tokens=MC_MAX_NEW_TOKENS))
    (tasks / "tiny_mc_ppl.yaml").write_text(PPL_YAML.format(root=root))
    return {
        "root": root, "model": model_dir, "tasks": tasks, "yesno_rows": yesno_rows, "mc_rows": mc_rows,
        "yesno_reference": yesno_reference, "mc_reference": mc_reference, "mc_loglikelihoods": mc_loglikelihoods,
    }  # fmt: skip


def offline_env(root: Path) -> dict:
    """No hub, no tracking: offline flags, a dead endpoint for anything that ignores them, a private HF cache."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(root / "hf_home"), "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip


def run_lmms_eval(workspace, tasks: str, model_args: str, output: Path, extra: list[str] = ()):
    lmms_eval = str(Path(sys.executable).parent / "lmms-eval")
    command = [
        lmms_eval, "--model", "convllava", "--model_args", model_args, "--tasks", tasks,
        "--include_path", str(workspace["tasks"]), "--device", "cpu", "--log_samples", "--output_path", str(output),
        "--verbosity", "WARNING", *extra,
    ]  # fmt: skip
    return subprocess.run(command, env=offline_env(workspace["root"]), capture_output=True, text=True, timeout=900)


def read_outputs(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(metrics per task, logged samples per task sorted by doc_id) of an lmms-eval output folder."""
    results = [json.loads(path.read_text()) for path in output.rglob("*_results.json")]
    assert len(results) == 1, f"expected one results file under {output}, got {len(results)}"
    samples = {}
    for path in output.rglob("*_samples_*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[path.stem.split("_samples_", 1)[1]] = sorted(rows, key=lambda row: row["doc_id"])
    return results[0]["results"], samples


@pytest.fixture(scope="module")
def evaluated(workspace):
    output = workspace["root"] / "out"
    model_args = f"pretrained={workspace['model']},dtype=float32,batch_size=2"
    result = run_lmms_eval(
        workspace, "convllava_tiny_yesno,convllava_tiny_mc,convllava_tiny_mc_ppl", model_args, output
    )
    # lmms-eval exits 0 even when evaluation failed: judge by the files it wrote
    (workspace["root"] / "lmms_eval.log").write_text(result.stdout + result.stderr)
    assert list(output.rglob("*_results.json")), f"no results; see {workspace['root'] / 'lmms_eval.log'}"
    return read_outputs(output)


def answers(rows: list[dict]) -> list[str]:
    """The recorded answer of each logged sample (a list of one with one process, the bare string with several)."""
    return [
        row["filtered_resps"][0] if isinstance(row["filtered_resps"], list) else row["filtered_resps"] for row in rows
    ]


def test_yes_no_answers_equal_generate_and_mme_pope_scores_match_a_hand_computation(workspace, evaluated):
    metrics, samples = evaluated
    recorded = answers(samples["convllava_tiny_yesno"])
    assert recorded == workspace["yesno_reference"]

    # by hand: MME counts "yes"/"no" (or a reply starting with them, or "y"/"n") and scores acc + acc+ per category;
    # POPE needs the exact word
    def mme_label(answer: str) -> str:
        text = answer.lower().strip().replace(".", "")
        if text in ("yes", "no"):
            return text
        if len(text) == 1:
            return {"y": "yes", "n": "no"}.get(text, "other")
        return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"

    truths = [row["answer"] for row in workspace["yesno_rows"]]
    hits = [mme_label(answer) == truth for answer, truth in zip(recorded, truths)]
    per_category = [(hits[i] + hits[i + 1]) / 2 * 100 + (hits[i] and hits[i + 1]) * 100 for i in range(0, 6, 2)]
    pope_hits = [answer.lower().strip() == truth for answer, truth in zip(recorded, truths)]
    task_metrics = metrics["convllava_tiny_yesno"]
    assert task_metrics["mme_perception_score,none"] == pytest.approx(sum(per_category))
    assert task_metrics["pope_accuracy,none"] == pytest.approx(sum(pope_hits) / 6)
    assert task_metrics["pope_yes_ratio,none"] == pytest.approx(0.5)


def test_multiple_choice_answers_equal_generate_and_seedbench_accuracy_matches_a_hand_computation(workspace, evaluated):
    metrics, samples = evaluated
    recorded = answers(samples["convllava_tiny_mc"])
    assert recorded == workspace["mc_reference"]  # document 2 has no image: answered as text only
    # by hand: SEED-Bench compares the answer's first character with the gold letter
    golds = [row["answer"] for row in workspace["mc_rows"]]
    hits = [answer.strip()[:1].lower() == gold.lower() for answer, gold in zip(recorded, golds)]
    assert hits == [True, False, True, False]
    assert metrics["convllava_tiny_mc"]["seed_all,none"] == pytest.approx(sum(hits) / len(hits))


def test_likelihood_scoring_equals_a_hand_computed_log_probability(workspace, evaluated):
    metrics, samples = evaluated
    rows = samples["convllava_tiny_mc_ppl"]
    for row, expected in zip(rows, workspace["mc_loglikelihoods"], strict=True):
        recorded = [float(value) for value, _ in row["filtered_resps"]]  # one (value, is_greedy) per choice
        # lmms-eval's models return a loss and its multiple-choice scoring takes the argmin: the negative log-likelihood
        assert recorded == pytest.approx([-value for value in expected], abs=1e-4)
    hits = [
        int(np.argmax(lls)) == row["gold_index"]
        for lls, row in zip(workspace["mc_loglikelihoods"], workspace["mc_rows"])
    ]
    assert metrics["convllava_tiny_mc_ppl"]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def test_data_parallel_over_two_processes_gives_the_same_answers(workspace, tmp_path):
    with socket.socket() as probe:  # a free local port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port), "-m", "lmms_eval", "--model", "convllava",
        "--model_args", f"pretrained={workspace['model']}", "--tasks", "convllava_tiny_mc",
        "--include_path", str(workspace["tasks"]), "--log_samples", "--output_path", str(output),
        "--verbosity", "WARNING",
    ]  # fmt: skip
    result = subprocess.run(command, env=offline_env(workspace["root"]), capture_output=True, text=True, timeout=900)
    assert list(output.rglob("*_results.json")), result.stdout[-3000:] + result.stderr[-3000:]
    metrics, samples = read_outputs(output)
    recorded = answers(samples["convllava_tiny_mc"])
    assert recorded == workspace["mc_reference"]
    golds = [row["answer"] for row in workspace["mc_rows"]]
    hits = [answer.strip()[:1].lower() == gold.lower() for answer, gold in zip(recorded, golds)]
    assert metrics["convllava_tiny_mc"]["seed_all,none"] == pytest.approx(sum(hits) / len(hits))


def test_unknown_model_args_and_a_missing_checkpoint_are_refused_clearly(workspace, tmp_path):
    result = run_lmms_eval(
        workspace, "convllava_tiny_mc", f"pretrained={workspace['model']},temprature=0", tmp_path / "a"
    )
    assert (
        "Unknown convllava model_args ['temprature']; valid keys: pretrained, dtype," in result.stdout + result.stderr
    )
    result = run_lmms_eval(workspace, "convllava_tiny_mc", f"pretrained={tmp_path / 'missing'}", tmp_path / "b")
    assert "No ConvLLaVA checkpoint could be loaded from" in result.stdout + result.stderr
    assert not list(tmp_path.rglob("*_results.json"))


@pytest.fixture(scope="module")
def plugin(workspace):
    from convllava_hf.evaluation.lmms_eval_model import ConvLlava

    return ConvLlava(pretrained=str(workspace["model"]), batch_size="3", device="cpu")


def make_request(plugin, question: str, image, gen_kwargs: dict, doc_id: int):
    from lmms_eval.api.instance import Instance

    plugin.task_dict.setdefault("unit", {}).setdefault("test", {})[doc_id] = {"image": image}
    arguments = (
        question,
        dict(gen_kwargs),
        lambda doc: [] if doc["image"] is None else [doc["image"]],
        doc_id,
        "unit",
        "test",
    )
    return Instance("generate_until", arguments, idx=0, metadata={"task": "unit", "doc_id": doc_id, "repeats": 1})


def test_each_request_keeps_its_own_generation_kwargs_in_a_mixed_batch(workspace, plugin):
    image = make_images()[0]
    beams = {"max_new_tokens": 4, "num_beams": 2, "until": ["\n\n"]}
    short = {"max_new_tokens": 2, "temperature": 0, "until": "e"}  # a bare string is one stop string
    cases = [("Describe the image.", image, beams), ("What is two plus two?", None, beams),
             ("What colour is the square?", image, short), ("Name a fruit.", None, short)]  # fmt: skip
    requests = [
        make_request(plugin, question, img, kwargs, index) for index, (question, img, kwargs) in enumerate(cases)
    ]
    recorded = plugin.generate_until(requests)

    processor, model = plugin.processor, plugin.model
    for (question, img, kwargs), answer in zip(cases, recorded, strict=True):
        inputs = processor(images=img, text=vicuna_prompt(question, with_image=img is not None), return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**inputs, do_sample=False, max_new_tokens=kwargs["max_new_tokens"],
                                    num_beams=kwargs.get("num_beams", 1))  # fmt: skip
        expected = processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        until = kwargs["until"] if isinstance(kwargs["until"], list) else [kwargs["until"]]
        for stop in until:
            expected = expected.split(stop)[0]
        assert answer == expected.strip()


def test_sampling_settings_follow_the_request(plugin):
    _, settings = plugin._generation_settings({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 5, "num_beams": 3})
    assert settings == {"max_new_tokens": 5, "num_beams": 3, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    until, settings = plugin._generation_settings({"temperature": 0, "top_p": 0.9, "until": ["</s>"]})
    assert until == ["</s>"] and settings["do_sample"] is False and settings["temperature"] is None
    assert settings["max_new_tokens"] == 1024 and settings["top_p"] is None
    _, settings = plugin._generation_settings({"temperature": 0.2, "do_sample": False})  # MMVet's settings
    assert settings["do_sample"] is False and settings["temperature"] is None


@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"batch_size": "0"}, "batch_size must be a positive integer"),
        ({"load_in_4bit": "maybe"}, "load_in_4bit must be true or false"),
        ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio must be one of"),
        ({"resolution": "100"}, "resolution must be a positive multiple of 64"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"max_new_tokens": "-3"}, "max_new_tokens must be a positive integer"),
    ],
)
def test_bad_model_args_are_refused_before_loading(workspace, model_args, message):
    from convllava_hf.evaluation.lmms_eval_model import ConvLlava

    with pytest.raises(ValueError, match=message):
        ConvLlava(pretrained=str(workspace["model"]), device="cpu", **model_args)


def test_model_args_override_the_image_settings(workspace):
    from convllava_hf.evaluation.lmms_eval_model import ConvLlava

    plugin = ConvLlava.create_from_arg_string(
        f"pretrained={workspace['model']},image_aspect_ratio=preserve,resolution=128,batch_size=4,max_new_tokens=7",
        {"batch_size": "1", "device": "cpu", "max_batch_size": None},
    )
    assert plugin.processor.image_processor.image_aspect_ratio == "preserve"
    assert plugin.processor.image_processor.resolution == 128
    assert plugin.batch_size == 4  # model_args win over --batch_size
    assert plugin.max_new_tokens == 7


def documented_plugin_check() -> str:
    """The Python code of docs/evaluation.md's `python -c "..."` check that lmms-eval finds the plugin."""
    docs = (REPO_ROOT / "docs" / "evaluation.md").read_text()
    return re.search(r'^python -c "(.*get_model\(.convllava.\).*)"', docs, flags=re.MULTILINE).group(1)


def test_the_documented_plugin_check_prints_the_class_or_fails_naming_the_cause(tmp_path):
    check = documented_plugin_check()
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.strip() == "<class 'convllava_hf.evaluation.lmms_eval_model.ConvLlava'>"

    shadow = tmp_path / "torchvision"  # the clash of lmms-eval's default torchvision with this torch
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    broken = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, env=env)
    assert broken.returncode == 1
    assert "Model 'convllava' not found" in broken.stderr
    output = broken.stdout + broken.stderr  # lmms-eval logs its WARNING through loguru
    assert "torchvision is installed but fails to import" in output and "pip uninstall torchvision" in output
