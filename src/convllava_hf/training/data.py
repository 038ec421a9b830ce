"""
LLaVA-format instruction data for ConvLLaVA: record validation, sample encoding with the processor's chat template,
and a lazy `torch` dataset.

A record is `{"id", "image" (optional; a path, or a list of paths, relative to the image folder), "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}`: human and gpt turns
alternate, starting with human and ending with gpt, and the `<image>` markers match the images one for one.
"""

import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import PIL.Image
import torch
from torch.utils.data import Dataset

from ..image_files import open_image
from ..processing_conv_llava import ConvLlavaProcessor

logger = logging.getLogger(__name__)

#: Label of every position that is not trained on (ignored by the cross-entropy loss).
IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
#: Unless `on_broken_record="skip"` is given explicitly, a dataset whose image records are broken in more than this
#: share (a wrong `--image-folder`, typically) is refused before training.
MAX_BROKEN_IMAGE_SHARE = 0.1
#: Kernel pseudo-filesystems: their "regular" files are not images (`/proc/self/status`, `/sys/...`).
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"))


class BrokenRecordError(ValueError):
    """A record that cannot be trained on: bad structure, missing or unreadable image, marker/image mismatch."""

    def __init__(self, record_id: str, reason: str):
        super().__init__(f"Record {record_id!r}: {reason}")
        self.record_id = record_id


class TooManyBrokenImagesError(ValueError):
    """More than `MAX_BROKEN_IMAGE_SHARE` of the image records name images that cannot be read from the image folder."""


def image_path_problem(folder: Path, relative: str, allow_outside: bool = False) -> str | None:
    """
    Why `relative` (a record's image path) cannot be read from `folder`, or None. Absolute paths and `..` that
    leave `folder` are refused unless `allow_outside`; the file must exist and be a regular file (not a device, a
    FIFO or a kernel pseudo-file), since reading anything else can block or never end.
    """
    if not allow_outside and (Path(relative).is_absolute() or os.path.normpath(relative).split(os.sep)[0] == ".."):
        return f"image path {relative!r} leaves the image folder {str(folder)!r} (pass --allow_images_outside_folder)"
    path = folder / relative
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"image file {str(path)!r} not found"
    except OSError as error:
        return f"image file {str(path)!r} cannot be read: {error.strerror}"
    resolved = path.resolve()
    if not stat.S_ISREG(mode) or any(resolved.is_relative_to(pseudo) for pseudo in PSEUDO_FILESYSTEMS):
        return f"image path {str(path)!r} is not a regular file"
    return None


class OverlongSampleError(BrokenRecordError):
    """A sample that cannot be truncated to `model_max_length` without cutting an image or every reply."""


@dataclass(frozen=True)
class LlavaRecord:
    """A validated record: its id, image paths (relative) and `(role, text)` turns with roles `user`/`assistant`."""

    id: str
    images: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template messages."""
        return [{"role": role, "content": text} for role, text in self.turns]


def parse_record(raw: Any, index: int) -> LlavaRecord:
    """
    Validate one raw LLaVA record (the `index`-th of its file, used as id when it has none) and normalise it like the
    original: a turn holding a single `<image>` has it moved to its start, followed by a newline.

    Raises:
        BrokenRecordError: naming the record and what is wrong with it.
    """
    if not isinstance(raw, dict):
        raise BrokenRecordError(f"#{index}", f"expected a JSON object, got {type(raw).__name__}")
    record_id = str(raw.get("id", f"#{index}"))
    images = raw.get("image")
    images = () if images is None else (images,) if isinstance(images, str) else images
    if not isinstance(images, Sequence) or not all(isinstance(path, str) and path for path in images):
        raise BrokenRecordError(record_id, f"'image' must be a path or a list of paths, got {raw.get('image')!r}")
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise BrokenRecordError(record_id, "'conversations' must be a non-empty list of turns")
    turns = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise BrokenRecordError(
                record_id, f"turn {position} must be {{'from': 'human' | 'gpt', 'value': str}}, got {turn!r}"
            )
        role, text = ROLES[turn["from"]], turn["value"]
        if role != ("user" if position % 2 == 0 else "assistant"):
            raise BrokenRecordError(
                record_id, f"turns must alternate human, gpt, ...; turn {position} is {turn['from']!r}"
            )
        if role == "assistant" and not text.strip():
            raise BrokenRecordError(record_id, f"turn {position} is an empty gpt reply")
        if text.count(IMAGE_MARKER) == 1:
            text = IMAGE_MARKER + "\n" + text.replace(IMAGE_MARKER, "").strip()
        turns.append((role, text))
    if turns[-1][0] != "assistant":
        reason = "no gpt turn answers the last human turn" if len(turns) > 1 else "no gpt turn"
        raise BrokenRecordError(record_id, reason)
    markers = sum(text.count(IMAGE_MARKER) for _, text in turns)
    if markers != len(images):
        raise BrokenRecordError(record_id, f"{markers} {IMAGE_MARKER} markers for {len(images)} images")
    return LlavaRecord(record_id, tuple(images), tuple(turns))


def load_records(path: str | os.PathLike) -> list[Any]:
    """
    Raw records of a LLaVA `.json` file (a list) or a `.jsonl` file (one record per line). Invalid JSON raises a
    `ValueError` naming the file and its line.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as file:
        if path.suffix == ".jsonl":
            return [_json_line(path, number, line) for number, line in enumerate(file, start=1) if line.strip()]
        try:
            records = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}, column {error.colno}).") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, got {type(records).__name__}.")
    return records


def _json_line(path: Path, number: int, line: str) -> Any:
    """The record on line `number` of a `.jsonl` file."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {number}: invalid JSON ({error.msg}, column {error.colno}).") from None


def encode_conversation(
    processor: ConvLlavaProcessor, messages: list[dict[str, str]], images: Sequence[Any] = ()
) -> dict[str, torch.Tensor]:
    """
    Tokenise a conversation with the processor's chat template and label its assistant replies.

    Returns:
        `input_ids` and `labels` (1-D, image markers expanded; labels are -100 except on the tokens of every assistant
        reply and its closing end-of-sequence token, as the template's `{% generation %}` markers delimit them), plus
        `pixel_values` and `image_sizes` when there are images.
    """
    inputs = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"images": list(images)} if images else None,
    )
    input_ids, assistant_mask = inputs["input_ids"][0], inputs["assistant_masks"][0].bool()
    if any(message["role"] == "assistant" for message in messages) and not assistant_mask.any():
        raise ValueError("The chat template marks no assistant reply; it needs {% generation %} markers around them.")
    labels = torch.where(assistant_mask, input_ids, IGNORE_INDEX)
    labels[input_ids == processor.image_token_id] = IGNORE_INDEX  # an <image> inside a reply is input, not target
    sample = {"input_ids": input_ids, "labels": labels}
    if images:
        sample.update(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    return sample


def truncate(
    sample: dict[str, torch.Tensor], max_length: int, image_token_id: int, record_id: str
) -> dict[str, torch.Tensor]:
    """Cut `input_ids`/`labels` to `max_length`; raises `OverlongSampleError` if that cuts an image or every reply."""
    length = len(sample["input_ids"])
    if length <= max_length:
        return sample
    image_positions = (sample["input_ids"] == image_token_id).nonzero()
    if len(image_positions) and image_positions.max() >= max_length:
        raise OverlongSampleError(
            record_id,
            f"{length} tokens with image tokens up to position {int(image_positions.max())}; truncating to "
            f"model_max_length {max_length} would cut an image",
        )
    if (sample["labels"][:max_length] == IGNORE_INDEX).all():
        raise OverlongSampleError(
            record_id, f"{length} tokens; no reply token is left within model_max_length {max_length}"
        )
    return {**sample, "input_ids": sample["input_ids"][:max_length], "labels": sample["labels"][:max_length]}


class LlavaDataset(Dataset):
    """
    Lazy supervised dataset over a LLaVA JSON file: records are validated up front, images are read and samples are
    encoded (see [`encode_conversation`]) only when indexed.

    Args:
        data_path: the `.json` (or `.jsonl`) file.
        processor: the ConvLLaVA processor (chat template, tokenizer, image processor).
        image_folder: folder the records' image paths are relative to; defaults to the data file's folder.
        model_max_length: truncate samples to this many tokens (after image expansion); `None` keeps them whole.
        on_broken_record: `"skip"` logs a warning naming the record and leaves it out, `"raise"` raises
            `BrokenRecordError`; `None` (the default) skips like `"skip"`, but raises `TooManyBrokenImagesError`
            when more than 10% of the image records name missing, outside or non-regular image files. Structural
            problems and image paths are checked when the dataset is built; undecodable images when the sample is
            loaded, in which case the next valid sample takes its place.
        on_overlong_sample: `"drop"` (warn and leave out) or `"raise"` for samples that `model_max_length` cannot be
            applied to without cutting through an image's tokens (or every reply).
        require_images: treat text-only records as broken (stages 1 and 2 train only the vision side, which a
            text-only sample gives no gradient).
        allow_images_outside_folder: accept absolute image paths and `..` leading out of `image_folder`.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        processor: ConvLlavaProcessor,
        image_folder: str | os.PathLike | None = None,
        model_max_length: int | None = None,
        on_broken_record: Literal["skip", "raise"] | None = None,
        on_overlong_sample: Literal["drop", "raise"] = "drop",
        require_images: bool = False,
        allow_images_outside_folder: bool = False,
    ):
        if on_broken_record not in ("skip", "raise", None):
            raise ValueError(f"on_broken_record must be 'skip' or 'raise', got {on_broken_record!r}.")
        if on_overlong_sample not in ("drop", "raise"):
            raise ValueError(f"on_overlong_sample must be 'drop' or 'raise', got {on_overlong_sample!r}.")
        if model_max_length is not None and model_max_length < 1:
            raise ValueError(f"model_max_length must be positive, got {model_max_length}.")
        self.processor = processor
        self.image_folder = Path(data_path).parent if image_folder is None else Path(image_folder)
        self.model_max_length = model_max_length
        self.on_broken_record = on_broken_record or "skip"
        self.on_overlong_sample = on_overlong_sample
        self.allow_images_outside_folder = allow_images_outside_folder
        self.records: list[LlavaRecord] = []
        self._reported: set[str] = set()
        image_records, broken_images = 0, []
        for index, raw in enumerate(load_records(data_path)):
            try:
                record = parse_record(raw, index)
                if require_images and not record.images:
                    raise BrokenRecordError(record.id, "has no image, so nothing this stage trains would learn from it")
                image_records += bool(record.images)
                problems = [self._image_problem(path) for path in record.images]
                if problem := next((problem for problem in problems if problem), None):
                    broken_images.append((record, problem))
                else:
                    self.records.append(record)
            except BrokenRecordError as error:
                self._report(error)
        if on_broken_record is None and len(broken_images) > MAX_BROKEN_IMAGE_SHARE * image_records:
            self._refuse_broken_images(broken_images, image_records, image_folder is None)
        for record, problem in broken_images:
            self._report(BrokenRecordError(record.id, problem))
        if not self.records:
            raise ValueError(f"{data_path} holds no valid record.")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The encoded sample of record `index`, or of the next valid record when that one is skipped or dropped."""
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                return self.encode(record)
            except BrokenRecordError as error:
                self._report(error)
        raise ValueError("Every record of the dataset is broken or overlong.")

    def encode(self, record: LlavaRecord) -> dict[str, torch.Tensor]:
        """Read a record's images and encode it (truncated to `model_max_length`)."""
        images = [self._load_image(record.id, path) for path in record.images]
        sample = encode_conversation(self.processor, record.messages(), images)
        if self.model_max_length is not None:
            sample = truncate(sample, self.model_max_length, self.processor.image_token_id, record.id)
        return sample

    def _image_problem(self, relative_path: str) -> str | None:
        return image_path_problem(self.image_folder, relative_path, self.allow_images_outside_folder)

    def _refuse_broken_images(
        self, broken: list[tuple[LlavaRecord, str]], image_records: int, default_folder: bool
    ) -> None:
        record, problem = broken[0]
        default = " (the data file's folder, as no --image-folder was given)" if default_folder else ""
        raise TooManyBrokenImagesError(
            f"{len(broken)} of {image_records} image records cannot be read from the image folder "
            f"{str(self.image_folder.resolve())!r}{default}, more than {MAX_BROKEN_IMAGE_SHARE:.0%}: e.g. record "
            f"{record.id!r}: {problem}. Check --image-folder, or pass --on_broken_record skip to train without them."
        )

    def _load_image(self, record_id: str, relative_path: str) -> PIL.Image.Image:
        path = self.image_folder / relative_path
        if problem := self._image_problem(relative_path):
            raise BrokenRecordError(record_id, problem)
        try:
            return open_image(path)
        except ValueError as error:
            raise BrokenRecordError(record_id, f"unreadable image: {error}") from error

    def _report(self, error: BrokenRecordError) -> None:
        """Raise the error or, once per record, log it, following the configured policy."""
        policy = self.on_overlong_sample if isinstance(error, OverlongSampleError) else self.on_broken_record
        if policy == "raise":
            raise error
        if error.record_id not in self._reported:
            self._reported.add(error.record_id)
            logger.warning("%s; %s.", error, "dropped" if isinstance(error, OverlongSampleError) else "skipped")
