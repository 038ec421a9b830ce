"""Training data: LLaVA records, the label mask, truncation around images, broken records, the collator."""

import json
import logging

import PIL.Image
import pytest
import torch

from convllava_hf.conversion.processor_building import processor_from_original
from convllava_hf.processing_conv_llava import ConvLlavaProcessor
from convllava_hf.training import (
    IGNORE_INDEX,
    BrokenRecordError,
    ConvLlavaDataCollator,
    LlavaDataset,
    OverlongSampleError,
    encode_conversation,
    parse_record,
)
from tiny_models import FIXTURE_DIR

IMAGE_TOKEN_ID = 800
EOS = 2


@pytest.fixture(scope="module")
def processor() -> ConvLlavaProcessor:
    """The fixture's tokenizer + `<image>`, 256-pixel "pad" mode: 16 image tokens per image."""
    return processor_from_original(FIXTURE_DIR / "llm", FIXTURE_DIR / "vision")


def human(value: str) -> dict:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict:
    return {"from": "gpt", "value": value}


def test_label_mask_covers_exactly_the_assistant_replies_and_their_closing_eos(processor):
    conversation = [human("What is it?\n<image>"), gpt("A red disc."), human("And the box?"), gpt("Blue.")]
    messages = parse_record({"id": "two-turns", "image": "x.png", "conversations": conversation}, 0).messages()
    image = PIL.Image.open(FIXTURE_DIR / "images" / "landscape_320x200.png")
    sample = encode_conversation(processor, messages, [image])
    input_ids, labels = sample["input_ids"], sample["labels"]
    tokens = processor.tokenizer.convert_ids_to_tokens(input_ids.tolist())

    # system, "▁USER", ":", "▁", 16 image tokens (33-48), "▁", "\n", question, "▁ASSISTANT", ":" (57, 58)
    assert (input_ids[33:49] == IMAGE_TOKEN_ID).all() and tokens[57:59] == ["▁ASSISTANT", ":"]
    first_reply, second_reply = range(59, 66), range(77, 83)
    assert tokens[59:66] == ["▁A", "▁red", "▁d", "is", "c", ".", "</s>"]
    assert tokens[66:77] == ["US", "ER", ":", "▁A", "nd", "▁the", "▁bo", "<0x78>", "?", "▁ASSISTANT", ":"]
    assert tokens[77:83] == ["▁", "<0x42>", "l", "ue", ".", "</s>"] and len(tokens) == 83
    trained = [position for position, label in enumerate(labels.tolist()) if label != IGNORE_INDEX]
    assert trained == [*first_reply, *second_reply]
    assert labels[trained].tolist() == input_ids[trained].tolist()
    assert input_ids[65] == input_ids[82] == EOS


def test_image_tokens_inside_a_reply_are_never_targets(processor):
    conversation = [human("Show me a picture."), gpt("Here: <image>")]
    messages = parse_record({"id": "image-reply", "image": "x.png", "conversations": conversation}, 0).messages()
    image = PIL.Image.open(FIXTURE_DIR / "images" / "square_256x256.png")
    sample = encode_conversation(processor, messages, [image])
    assert (sample["input_ids"] == IMAGE_TOKEN_ID).sum() == 16
    assert not (sample["labels"] == IMAGE_TOKEN_ID).any()
    assert (sample["labels"] != IGNORE_INDEX).any()


def test_text_only_record_trains_its_reply_and_has_no_pixels(processor):
    record = parse_record({"conversations": [human("Say hi."), gpt("Hi.")]}, 7)
    sample = encode_conversation(processor, record.messages())
    assert record.id == "#7" and "pixel_values" not in sample
    trained = (sample["labels"] != IGNORE_INDEX).nonzero().flatten().tolist()
    reply = processor.tokenizer("Hi.", add_special_tokens=False).input_ids
    assert trained == list(range(len(sample["input_ids"]) - len(reply) - 1, len(sample["input_ids"])))
    assert sample["labels"][-1] == EOS


def test_an_image_marker_is_moved_to_the_start_of_its_turn_like_the_original():
    conversation = [human("Describe  <image> please. "), gpt("Ok.")]
    record = parse_record({"id": 1, "image": "a.png", "conversations": conversation}, 0)
    assert record.turns[0] == ("user", "<image>\nDescribe   please.")
    conversation = [human("<image> vs <image>?"), gpt("Same.")]
    two = parse_record({"id": 2, "image": ["a.png", "b.png"], "conversations": conversation}, 0)
    assert two.turns[0] == ("user", "<image> vs <image>?") and two.images == ("a.png", "b.png")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"id": "a", "conversations": [human("Hi?")]}, "no gpt turn"),
        ({"id": "b", "conversations": [human("Hi?"), gpt("Yo."), human("And?")]}, "no gpt turn answers the last"),
        ({"id": "c", "conversations": [gpt("Hi."), human("Hi?")]}, "turns must alternate"),
        ({"id": "d", "conversations": [human("Hi?"), gpt("  ")]}, "empty gpt reply"),
        ({"id": "e", "conversations": [human("<image>\nHi?"), gpt("Yo.")]}, "1 <image> markers for 0 images"),
        ({"id": "f", "image": "x.png", "conversations": [human("Hi?"), gpt("Yo.")]}, "0 <image> markers for 1 images"),
        ({"id": "g", "conversations": []}, "non-empty list"),
        ({"id": "h", "conversations": [{"from": "bot", "value": "Hi"}]}, "turn 0 must be"),
    ],
)
def test_structurally_broken_records_are_named_and_explained(raw, reason):
    with pytest.raises(BrokenRecordError, match=reason) as error:
        parse_record(raw, 0)
    assert error.value.record_id == raw["id"]


@pytest.fixture
def broken_data(tmp_path):
    """Two good records and one of each kind of broken record (structural ones and ones found when loading)."""
    PIL.Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "good.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:40])
    question = [human("<image>\nColour?"), gpt("Red.")]
    records = [
        {"id": "good-1", "image": "good.png", "conversations": question},
        {"id": "missing-file", "image": "nowhere.png", "conversations": question},
        {"id": "unreadable", "image": "truncated.png", "conversations": question},
        {"id": "no-answer", "image": "good.png", "conversations": question[:1]},
        {"id": "marker-mismatch", "image": "good.png", "conversations": [human("Colour?"), gpt("Red.")]},
        {"id": "good-2", "conversations": [human("Hi?"), gpt("Hello.")]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_broken_records_are_skipped_with_a_warning_naming_each(processor, broken_data, caplog):
    with caplog.at_level(logging.WARNING, logger="convllava_hf.training.data"):
        dataset = LlavaDataset(broken_data, processor, on_broken_record="skip")  # 1 of 3 images missing: > 10%
        assert [record.id for record in dataset.records] == ["good-1", "unreadable", "good-2"]  # paths checked first
        samples = [dataset[index] for index in range(len(dataset))]
    for record_id in ("missing-file", "unreadable", "no-answer", "marker-mismatch"):
        assert sum(record_id in message for message in caplog.messages) == 1, record_id
    assert "not found" in caplog.text and "unreadable image" in caplog.text
    # a sample that fails to load is replaced by the next valid one, so batches stay full
    assert torch.equal(samples[1]["input_ids"], samples[2]["input_ids"]) and "pixel_values" not in samples[1]


def test_broken_records_raise_when_configured(processor, broken_data):
    with pytest.raises(BrokenRecordError, match="'no-answer'"):
        LlavaDataset(broken_data, processor, on_broken_record="raise")
    records = json.loads(broken_data.read_text())
    broken_data.write_text(json.dumps([r for r in records if r["id"] in ("good-1", "missing-file")]))
    with pytest.raises(BrokenRecordError, match="'missing-file'.*nowhere.png' not found"):
        LlavaDataset(broken_data, processor, on_broken_record="raise")
    broken_data.write_text(json.dumps([r for r in records if r["id"] in ("good-1", "unreadable")]))
    dataset = LlavaDataset(broken_data, processor, on_broken_record="raise")
    dataset[0]
    for _ in range(2):  # every time, not only the first
        with pytest.raises(BrokenRecordError, match="'unreadable'.*unreadable image"):
            dataset[1]


def test_image_stages_treat_text_only_records_as_broken(processor, broken_data):
    dataset = LlavaDataset(broken_data, processor, on_broken_record="skip", require_images=True)
    assert "good-2" not in [record.id for record in dataset.records]


@pytest.fixture
def long_data(tmp_path):
    """A record whose image comes in a second turn after a long first one, and one whose image comes first."""
    PIL.Image.new("RGB", (64, 64), (0, 90, 200)).save(tmp_path / "blue.png")
    long_text = " ".join(["blue sky"] * 20)
    late = [human(long_text), gpt("Yes."), human("<image>\nAnd?"), gpt("Blue.")]
    early = [human("<image>\nColour?"), gpt("Blue. " + long_text)]
    records = [
        {"id": "image-last", "image": "blue.png", "conversations": late},
        {"id": "image-first", "image": "blue.png", "conversations": early},
    ]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(records))
    return path


def test_truncation_never_cuts_an_image_and_drops_or_raises_as_configured(processor, long_data, caplog):
    full = LlavaDataset(long_data, processor)
    first = full.encode(full.records[1])
    image_end = int((first["input_ids"] == IMAGE_TOKEN_ID).nonzero().max()) + 1
    late_image = (full.encode(full.records[0])["input_ids"] == IMAGE_TOKEN_ID).nonzero()
    limit = int(late_image.min()) + 8  # inside the late image's tokens
    assert image_end < int((first["labels"] != IGNORE_INDEX).nonzero().min()) < limit < len(first["input_ids"])

    with caplog.at_level(logging.WARNING, logger="convllava_hf.training.data"):
        dataset = LlavaDataset(long_data, processor, model_max_length=limit)
        cut = dataset.encode(dataset.records[1])
        assert torch.equal(cut["input_ids"], first["input_ids"][:limit])
        assert torch.equal(cut["labels"], first["labels"][:limit])
        assert (cut["input_ids"] == IMAGE_TOKEN_ID).sum() == 16
        with pytest.raises(OverlongSampleError):
            dataset.encode(dataset.records[0])
        assert torch.equal(dataset[0]["input_ids"], cut["input_ids"])  # "image-last" dropped, next sample instead
    assert "'image-last'" in caplog.text and "would cut an image" in caplog.text and "dropped" in caplog.text

    with pytest.raises(OverlongSampleError, match="'image-last'.*would cut an image"):
        LlavaDataset(long_data, processor, model_max_length=limit, on_overlong_sample="raise")[0]
    with pytest.raises(OverlongSampleError, match="no reply token is left"):
        LlavaDataset(long_data, processor, model_max_length=image_end + 2, on_overlong_sample="raise")[1]


def test_bad_policies_and_empty_datasets_are_rejected(processor, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": "x", "conversations": [human("Hi?")]}]))
    with pytest.raises(ValueError, match="on_broken_record must be"):
        LlavaDataset(path, processor, on_broken_record="ignore")
    with pytest.raises(ValueError, match="holds no valid record"):
        LlavaDataset(path, processor)
    path.write_text(json.dumps({"id": "x"}))
    with pytest.raises(ValueError, match="must hold a JSON list"):
        LlavaDataset(path, processor)


def test_jsonl_files_are_read_line_by_line(processor, tmp_path):
    path = tmp_path / "data.jsonl"
    records = [{"id": str(i), "conversations": [human("Hi?"), gpt("Yo.")]} for i in range(3)]
    path.write_text("\n".join(map(json.dumps, records)) + "\n")
    assert [record.id for record in LlavaDataset(path, processor).records] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("data.jsonl", '{"id": "0"}\n\n{"id": "2"}\n{"id": 3,\n', r"data.jsonl, line 4: invalid JSON \(Expecting"),
        ("data.json", '[{"id": "0"},\n {"id": "1"},\n {"id" "2"}]', r"data.json, line 3: invalid JSON \(Expecting ':'"),
    ],
)
def test_invalid_json_names_the_file_and_its_real_line(processor, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        LlavaDataset(path, processor)


def test_collator_pads_to_the_longest_sample_and_gathers_every_image():
    def feature(length: int, images: list[tuple[int, int]]) -> dict:
        sample = {"input_ids": torch.arange(3, 3 + length), "labels": torch.arange(3, 3 + length)}
        if images:  # each image filled with its own value: length + index
            sample["pixel_values"] = torch.stack(
                [torch.full((3, 128, 128), float(length + i)) for i in range(len(images))]
            )
            sample["image_sizes"] = torch.tensor(images)
        return sample

    features = [feature(5, [(64, 128)]), feature(8, []), feature(3, [(128, 64), (128, 128)])]
    batch = ConvLlavaDataCollator(pad_token_id=0)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, 8)
    assert batch["input_ids"][0].tolist() == [3, 4, 5, 6, 7, 0, 0, 0]
    assert batch["labels"][2].tolist() == [3, 4, 5] + [IGNORE_INDEX] * 5
    assert batch["attention_mask"].sum(1).tolist() == [5, 8, 3]
    # every image of the batch, in sample order: sample 0's (filled with 5), then sample 2's two (3 and 4)
    expected = torch.stack([torch.full((3, 128, 128), fill) for fill in (5.0, 3.0, 4.0)])
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["image_sizes"].tolist() == [[64, 128], [128, 64], [128, 128]]

    left = ConvLlavaDataCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=4)(features[:2])
    assert left["input_ids"].shape == (2, 8) and left["input_ids"][0].tolist() == [0, 0, 0, 3, 4, 5, 6, 7]
    assert "pixel_values" not in ConvLlavaDataCollator(pad_token_id=0)(features[1:2])
