"""RefCOCO-style grounding evaluation: scoring against hand-computed IoUs, and `convllava-eval-grounding` end to end."""

import json
import re

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import convllava_hf  # noqa: F401  (registers the Auto classes)
from converted_tiny import convert_original_tiny, vicuna_prompt
from convllava_hf.cli import eval_grounding
from convllava_hf.evaluation.loading import load_for_evaluation
from convllava_hf.evaluation.refcoco import GroundingSample, read_samples, score
from tiny_models import FIXTURE_DIR


def sample(bbox, width, height):
    return GroundingSample("unused.png", "the thing", tuple(float(value) for value in bbox), width, height)


def test_score_counts_iou_of_at_least_half_as_a_hit_like_the_original():
    cases = [
        # landscape 300x200 (padding 50 above): [0.1, 0.2, 0.5, 0.6] -> (30, 10, 150, 130), IoU 1
        (sample([30, 10, 150, 130], 300, 200), "[0.1, 0.2, 0.5, 0.6]", 1.0),
        # (0, -50, 300, 40) is not clipped, as in the original: 12000 / 27000 (clipped it would be 1.0)
        (sample([0, 0, 300, 40], 300, 200), "[0, 0, 1, 0.3]", 12000 / 27000),
        # portrait 100x400 (padding 150 left), 0-1000 grid: (10, 100, 90, 280) in (10, 100, 90, 300): 14400 / 16000
        (sample([10, 100, 90, 300], 100, 400), "The box is [400, 250, 600, 700].", 0.9),
        # square 256: (64, 64, 192, 192) vs (0, 0, 128, 128): 4096 / (16384 + 16384 - 4096)
        (sample([0, 0, 128, 128], 256, 256), "[0.25, 0.25, 0.75, 0.75]", 4096 / 28672),
        # exactly 0.5 counts: (0, 0, 50, 100) in (0, 0, 100, 100)
        (sample([0, 0, 100, 100], 100, 100), "[0, 0, 0.5, 1]", 0.5),
        (sample([0, 0, 100, 100], 100, 100), "I cannot tell.", 0.0),
        (sample([0, 0, 100, 100], 100, 100), "[0.1, 0.2, 0.5]", 0.0),
    ]
    precision, results = score([case[0] for case in cases], [case[1] for case in cases])
    assert [result["iou"] for result in results] == pytest.approx([case[2] for case in cases])
    assert [result["correct"] for result in results] == [True, False, True, False, True, False, False]
    assert precision == pytest.approx(3 / 7)
    assert results[1]["pred_bbox"] == pytest.approx([0, -50, 300, 40])
    assert results[5]["pred_bbox"] is None


def test_score_in_preserve_mode_scales_to_the_image():
    precision, results = score([sample([30, 40, 150, 120], 300, 200)], ["[0.1, 0.2, 0.5, 0.6]"], "preserve")
    assert precision == 1.0 and results[0]["pred_bbox"] == pytest.approx([30, 40, 150, 120])


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "a.png", "sent": "x", "bbox": [0, 0, 1, 1], "width": 4}', r"line 2: missing \['height'\]"),
        ('{"image": "a.png", "sent": "x", "bbox": [0, 0, 1], "width": 4, "height": 4}', "line 2: bbox must be"),
        ('{"image": "a.png", "sent": "x", "bbox": [5, 0, 1, 1], "width": 4, "height": 4}', "line 2: bbox must be"),
        ('{"image": "a.png", "sent": "x", "bbox": [0, 0, 1, 1], "width": 0, "height": 4}', "line 2: width and height"),
        ("not json", "line 2: Expecting value"),
    ],
)
def test_read_samples_names_the_line_of_a_malformed_record(tmp_path, line, message):
    good = '{"image": "a.png", "sent": "x", "bbox": [0, 0, 1, 1], "width": 4, "height": 4}'
    path = tmp_path / "data.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_samples(path)


def test_a_missing_checkpoint_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No ConvLLaVA checkpoint could be loaded from .*no local folder .* exists"):
        load_for_evaluation(tmp_path / "missing")


# The fixture's images with made-up referring expressions and boxes.
RECORDS = [
    {
        "image": "landscape_320x200.png",
        "sent": "the red thing",
        "bbox": [10, 20, 100, 150],
        "width": 320,
        "height": 200,
    },
    {"image": "portrait_150x260.png", "sent": "a blue square", "bbox": [0, 0, 75, 130], "width": 150, "height": 260},
    {"image": "square_256x256.png", "sent": "the centre", "bbox": [64, 64, 192, 192], "width": 256, "height": 256},
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_original_tiny(tmp_path_factory.mktemp("converted") / "convllava-tiny")


def test_eval_grounding_records_the_models_own_answers_and_their_precision(converted, tmp_path, capsys):
    data = tmp_path / "refcoco_tiny.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    output = tmp_path / "results" / "out.jsonl"
    eval_grounding.main([
        "--model", str(converted), "--data", str(data), "--image-folder", str(FIXTURE_DIR / "images"),
        "--output", str(output), "--batch-size", "2", "--max-new-tokens", str(MAX_NEW_TOKENS),
    ])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in output.read_text().splitlines()]

    # each recorded answer is what plain generate gives for the original's prompt, one image at a time
    processor = AutoProcessor.from_pretrained(converted)
    model = AutoModelForImageTextToText.from_pretrained(converted).eval()
    for record, row in zip(RECORDS, rows, strict=True):
        question = (
            f"Please provide the bounding box coordinate of the region this sentence describes: {record['sent']}."
        )
        image = Image.open(FIXTURE_DIR / "images" / record["image"]).convert("RGB")
        inputs = processor(images=image, text=vicuna_prompt(question), return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
        expected = processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert row["answer"] == expected
        assert row["gt_bbox"] == record["bbox"]

    # by hand: the random model writes no "[a, b, c, d]" box, so every answer is a miss
    boxes = [re.search(r"\[\s*[\d.]+\s*,\s*[\d.]+\s*,\s*[\d.]+\s*,\s*[\d.]+\s*\]", row["answer"]) for row in rows]
    assert boxes == [None, None, None]
    assert [row["correct"] for row in rows] == [False, False, False]
    assert summary == {"data": str(data), "precision@1": 0.0, "correct": 0, "total": 3}


def test_eval_grounding_refuses_a_record_whose_image_size_is_wrong(converted, tmp_path):
    data = tmp_path / "wrong_size.jsonl"
    data.write_text(json.dumps({**RECORDS[0], "width": 321}) + "\n")
    with pytest.raises(SystemExit, match="is 320x200 pixels but its record says 321x200"):
        eval_grounding.main([
            "--model", str(converted), "--data", str(data), "--image-folder", str(FIXTURE_DIR / "images"),
            "--output", str(tmp_path / "out.jsonl"),
        ])  # fmt: skip
    assert not (tmp_path / "out.jsonl").exists()


def test_image_paths_default_to_the_data_files_folder_as_in_training(tmp_path, monkeypatch):
    data_folder = tmp_path / "refcoco"
    data_folder.mkdir()
    data = data_folder / "val.jsonl"
    data.write_text('{"image": "a.png", "sent": "x", "bbox": [0, 0, 1, 1], "width": 4, "height": 4}\n')
    Image.new("RGB", (4, 4)).save(data_folder / "a.png")
    monkeypatch.chdir(tmp_path)  # a.png is not in the working directory
    with pytest.raises(SystemExit, match="No ConvLLaVA checkpoint could be loaded"):  # the images were found
        eval_grounding.main(["--model", str(tmp_path / "missing"), "--data", str(data)])
