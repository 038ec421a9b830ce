"""The rules several parts of the package share (visual-token count, resolution check, embedding padding, trainable
stages) each have one home; these tests pin each home against hand computations and its callers against the home."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from convllava_hf import ConvLlavaConfig, ConvLlavaImageProcessor
from convllava_hf.configuration_conv_llava import check_resolution, num_visual_tokens, visual_token_grid
from convllava_hf.conversion import ConversionError, convert_checkpoint
from convllava_hf.conversion.laion_convnext import convert_laion_convnext
from convllava_hf.conversion.laion_convnext import main as convert_laion_convnext_main
from convllava_hf.embedding_padding import pad_rows_with_mean, padded_vocab_size
from convllava_hf.training.arguments import ConvLlavaArguments
from convllava_hf.training.stages import check_vision_trainable_from
from tiny_models import FIXTURE_DIR


@pytest.mark.parametrize(
    ("height", "width", "stride", "grid"),
    [(768, 768, 64, (12, 12)), (768, 512, 64, (12, 8)), (1536, 64, 64, (24, 1)), (256, 256, 32, (8, 8))],
)
def test_visual_tokens_are_one_per_stride_square_of_content(height, width, stride, grid):
    assert visual_token_grid(height, width, stride) == grid
    assert num_visual_tokens(height, width, stride) == grid[0] * grid[1]


@pytest.mark.parametrize("resolution", [0, -64, 100, 64.0, "768", None])
def test_resolution_check_names_the_setting_and_raises_the_callers_error(resolution):
    with pytest.raises(ValueError, match=rf"^image_resolution must be a positive multiple of 64, got {resolution!r}"):
        check_resolution(resolution, "image_resolution")
    with pytest.raises(ConversionError, match="--resolution must be a positive multiple of 64"):
        check_resolution(resolution, "--resolution", ConversionError)


def refuse_in_config(resolution: int, tmp_path: Path) -> None:
    ConvLlavaConfig(image_resolution=resolution)


def refuse_in_image_processor(resolution: int, tmp_path: Path) -> None:
    ConvLlavaImageProcessor(resolution=resolution)


def refuse_in_image_processor_call(resolution: int, tmp_path: Path) -> None:
    ConvLlavaImageProcessor(resolution=64)(torch.zeros(3, 8, 8, dtype=torch.uint8), resolution=resolution)


def refuse_in_content_size(resolution: int, tmp_path: Path) -> None:
    ConvLlavaImageProcessor(resolution=64, image_aspect_ratio="preserve").content_size(100, 200, resolution=resolution)


def refuse_in_num_image_tokens(resolution: int, tmp_path: Path) -> None:
    ConvLlavaImageProcessor(resolution=64).num_image_tokens(100, 200, resolution=resolution)


def refuse_in_laion_converter_cli(resolution: int, tmp_path: Path) -> None:
    """`--resolution` of the LAION tower converter; its exit status 2 and message become a ValueError here."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = convert_laion_convnext_main(
            ["--checkpoint", str(tmp_path), "--output", str(tmp_path / "tower"), "--resolution", str(resolution)]
        )
    assert not (tmp_path / "tower").exists()
    if status == 2:
        raise ValueError(stderr.getvalue())


def refuse_in_checkpoint_converter(resolution: int, tmp_path: Path) -> None:
    """The main converter takes its resolution from the vision folder's `preprocessor_config.json`."""
    vision = shutil.copytree(FIXTURE_DIR / "vision", tmp_path / "vision")
    preprocessor = json.loads((vision / "preprocessor_config.json").read_text())
    preprocessor |= {"size": {"shortest_edge": resolution}, "crop_size": {"height": resolution, "width": resolution}}
    (vision / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    try:
        convert_checkpoint(str(FIXTURE_DIR / "llm"), tmp_path / "out", str(vision))
    finally:
        assert not (tmp_path / "out").exists()


# multiples of the half stride 32 that are not multiples of 64: a check against 32 would accept every one of them
@pytest.mark.parametrize("resolution", [32, 96, 800, 1056])
@pytest.mark.parametrize(
    "entry_point",
    [
        refuse_in_config, refuse_in_image_processor, refuse_in_image_processor_call,
        refuse_in_content_size, refuse_in_num_image_tokens, refuse_in_laion_converter_cli,
        refuse_in_checkpoint_converter,
    ],
)  # fmt: skip
def test_every_public_entry_point_refuses_a_multiple_of_32_that_is_not_one_of_64(tmp_path, entry_point, resolution):
    with pytest.raises(ValueError, match=f"must be a positive multiple of 64, got {resolution}"):
        entry_point(resolution, tmp_path)


def test_laion_conversion_refuses_a_bad_resolution_with_a_conversion_error(tmp_path):
    with pytest.raises(ConversionError, match="^--resolution must be a positive multiple of 64, got 100."):
        convert_laion_convnext(str(tmp_path / "missing"), tmp_path / "out", resolution=100)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("num_tokens", "rows"), [(1, 64), (64, 64), (65, 128), (32001, 32064)])
def test_embedding_rows_round_up_to_a_multiple_of_64(num_tokens, rows):
    assert padded_vocab_size(num_tokens) == rows


def test_new_embedding_rows_are_the_float32_mean_cast_to_the_output_dtype():
    weight = torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0009765625]])
    padded = pad_rows_with_mean(weight, 5, torch.bfloat16)
    # mean (2, 3.00032552...) rounds to bfloat16 (2, 3.0); the original rows are cast, not re-derived
    expected = torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [2.0, 3.0], [2.0, 3.0]], dtype=torch.bfloat16)
    assert padded.dtype == torch.bfloat16 and torch.equal(padded, expected)
    assert torch.equal(pad_rows_with_mean(weight, 3), weight)  # nothing to add, dtype kept


@pytest.mark.parametrize("first", [0, 6])
def test_vision_trainable_from_is_refused_by_the_command_line_and_the_recipe_alike(first):
    with pytest.raises(ValueError, match=rf"^--vision_trainable_from must be a ConvNeXt stage 1-5, got {first}\."):
        ConvLlavaArguments(stage=2, model="m", data="d.json", vision_trainable_from=first)
    with pytest.raises(ValueError, match=rf"^vision_trainable_from must be a ConvNeXt stage 1-5, got {first}\."):
        check_vision_trainable_from(first)
