"""Training image paths: a wrong image folder stops the run; paths out of the folder and non-files are refused."""

import json
import logging
import os
from pathlib import Path

import PIL.Image
import pytest

from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from convllava_hf.training.data import LlavaDataset, TooManyBrokenImagesError
from test_training_stages import build_dataset, save_base_model, train
from tiny_models import FIXTURE_DIR

QUESTION = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def processor() -> ConvLlavaProcessor:
    return processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")


def write_records(folder: Path, images: list[str], text_only: int = 0) -> Path:
    """A data file with one image record per path (`good.png` exists in `folder`) and `text_only` text records."""
    PIL.Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "good.png")
    records = [{"id": f"image-{index}", "image": path, "conversations": QUESTION} for index, path in enumerate(images)]
    text = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    records += [{"id": f"text-{index}", "conversations": text} for index in range(text_only)]
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_wrong_image_folder_stops_training_naming_the_folder_and_an_example_path(tmp_path):
    data = build_dataset(tmp_path / "data")
    wrong = tmp_path / "not-the-images"
    wrong.mkdir()
    with pytest.raises(TooManyBrokenImagesError) as error:
        train(3, save_base_model(tmp_path / "base"), data, tmp_path / "out", f"--image-folder={wrong}")
    message = str(error.value)
    assert f"16 of 16 image records cannot be read from the image folder '{wrong}'" in message
    assert f"'{wrong / '0.png'}' not found" in message and "--on_broken_record skip" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_image_folder_names_the_data_files_folder_it_searched(processor, tmp_path):
    data = write_records(tmp_path, ["nested/a.png", "nested/b.png", "good.png"], text_only=5)
    pattern = rf"2 of 3 .*'{tmp_path}' \(the data file's folder.*nested/a.png"
    with pytest.raises(TooManyBrokenImagesError, match=pattern):
        LlavaDataset(data, processor)


def test_explicit_skip_trains_without_the_broken_image_records(processor, tmp_path, caplog):
    data = write_records(tmp_path, ["gone.png", "good.png"], text_only=1)
    with caplog.at_level(logging.WARNING, logger="convllava_hf.training.data"):
        dataset = LlavaDataset(data, processor, on_broken_record="skip")
    assert [record.id for record in dataset.records] == ["image-1", "text-0"]
    assert "'image-0'" in caplog.text and "gone.png' not found; skipped" in caplog.text


def test_a_few_broken_image_records_are_logged_and_skipped(processor, tmp_path, caplog):
    data = write_records(tmp_path, ["gone.png"] + ["good.png"] * 10)  # 1 of 11: under 10%
    with caplog.at_level(logging.WARNING, logger="convllava_hf.training.data"):
        dataset = LlavaDataset(data, processor)
    assert len(dataset.records) == 10 and "'image-0'" in caplog.text and "not found; skipped" in caplog.text


@pytest.mark.parametrize("path", ["/etc/hostname", "../outside.png", "sub/../../outside.png"])
def test_image_paths_leaving_the_image_folder_are_refused(processor, tmp_path, path):
    folder = tmp_path / "images"
    folder.mkdir()
    PIL.Image.new("RGB", (64, 48)).save(tmp_path / "outside.png")
    data = write_records(folder, [path] + ["good.png"] * 10)
    dataset = LlavaDataset(data, processor, on_broken_record="skip")
    assert [record.id for record in dataset.records] == [f"image-{index}" for index in range(1, 11)]
    with pytest.raises(Exception, match=f"{path!r} leaves the image folder .*--allow_images_outside_folder"):
        LlavaDataset(data, processor, on_broken_record="raise")


def test_paths_outside_the_folder_are_read_when_allowed(processor, tmp_path):
    PIL.Image.new("RGB", (64, 48)).save(tmp_path / "outside.png")
    (tmp_path / "images").mkdir()
    data = write_records(tmp_path / "images", [str(tmp_path / "outside.png"), "../outside.png"])
    dataset = LlavaDataset(data, processor, on_broken_record="raise", allow_images_outside_folder=True)
    assert [dataset[index]["pixel_values"].shape[0] for index in range(2)] == [1, 1]


@pytest.mark.parametrize("kind", ["device", "fifo", "proc"])
def test_devices_fifos_and_proc_files_are_not_regular_files(processor, tmp_path, kind):
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.png")
    path = {"device": "/dev/zero", "fifo": "pipe.png", "proc": "/proc/self/status"}[kind]
    data = write_records(tmp_path, [path])
    with pytest.raises(Exception, match=r"'image-0'.*is not a regular file"):
        LlavaDataset(data, processor, on_broken_record="raise", allow_images_outside_folder=True)
