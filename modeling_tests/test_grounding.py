"""Grounding answers to pixel boxes and back, against boxes computed by hand."""

import math

import pytest

from convllava_hf.grounding import (
    box_iou,
    box_to_pixels,
    parse_box,
    pixels_to_box_text,
    post_process_grounding,
)

# (height, width) of the original images.
LANDSCAPE = (200, 300)  # padded square 300, content shifted down by (300 - 200) // 2 = 50
PORTRAIT = (400, 100)  # padded square 400, content shifted right by (400 - 100) // 2 = 150
SQUARE = (256, 256)
ODD_LANDSCAPE = (200, 301)  # offset (301 - 200) // 2 = 50, floored like the original's expand2square


def assert_box(actual, expected):
    assert actual is not None
    assert actual == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6)),
        ("The region is [0.10, 0.20, 0.50, 0.60].", (0.1, 0.2, 0.5, 0.6)),
        ("[[0.1,0.2,0.5,0.6]]", (0.1, 0.2, 0.5, 0.6)),
        ("[100, 200, 500, 600]", (0.1, 0.2, 0.5, 0.6)),  # sum >= 4: a 0-1000 grid
        ("[0, 0, 1, 1]", (0.0, 0.0, 1.0, 1.0)),  # sum 2 < 4: already normalised
        ("[1, 1, 1, 1]", (0.001, 0.001, 0.001, 0.001)),  # sum exactly 4 is divided, as in the original
        ("[0.1, 0.2, 0.5, 0.6] and [0.7, 0.7, 0.8, 0.8]", (0.1, 0.2, 0.5, 0.6)),  # the first box
        ("[.5, 0.25, 7.5e-1, 1.]", (0.5, 0.25, 0.75, 1.0)),
    ],
)
def test_parse_box_reads_the_first_box_and_normalises_a_1000_grid(text, expected):
    assert_box(parse_box(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "[0.1, 0.2, 0.3]",
        "[0.1, 0.2, 0.3, 0.4, 0.5]",
        "[-0.1, 0.2, 0.3, 0.4]",
        "[0.1, 0.2, -0.3, 0.4]",
        "[nan, 0.2, 0.3, 0.4]",
        "[0.1, 0.2, inf, 0.4]",
        "[0.5, 0.2, 0.3, 0.4]",  # x2 < x1
        "[0.1, 0.6, 0.3, 0.4]",  # y2 < y1
        "[a, b, c, d]",
        "[0.1, 0.2, 0.3, 0.4",
        "[0.1 0.2 0.3 0.4]",
        "[]",
        "a red car on the left",
        "",
        "[0.1, 0.2, 0.3] then [0.1, 0.2, 0.3, 0.4]",  # only the first bracketed list counts
    ],
)
def test_parse_box_gives_none_for_a_bad_answer(text):
    assert parse_box(text) is None
    assert box_to_pixels(text, LANDSCAPE) is None


@pytest.mark.parametrize(
    "image_size, text, expected",
    [
        (LANDSCAPE, "[0.1, 0.2, 0.5, 0.6]", (30, 60 - 50, 150, 180 - 50)),
        (LANDSCAPE, "[100, 200, 500, 600]", (30, 10, 150, 130)),
        (PORTRAIT, "[0.4, 0.25, 0.6, 0.75]", (160 - 150, 100, 240 - 150, 300)),
        (SQUARE, "[0.25, 0.5, 0.75, 1.0]", (64, 128, 192, 256)),
        (ODD_LANDSCAPE, "[0.0, 0.5, 0.5, 0.75]", (0, 150.5 - 50, 150.5, 225.75 - 50)),
    ],
)
def test_pad_mode_undoes_the_square_padding(image_size, text, expected):
    assert_box(box_to_pixels(text, image_size, "pad"), expected)


@pytest.mark.parametrize(
    "image_size, text, expected",
    [
        (LANDSCAPE, "[0.1, 0.2, 0.5, 0.6]", (30, 40, 150, 120)),
        (PORTRAIT, "[0.4, 0.25, 0.6, 0.75]", (40, 100, 60, 300)),
        (SQUARE, "[0.25, 0.5, 0.75, 1.0]", (64, 128, 192, 256)),
    ],
)
def test_preserve_mode_scales_to_the_image_itself(image_size, text, expected):
    assert_box(box_to_pixels(text, image_size, "preserve"), expected)


def test_a_box_reaching_into_the_padding_is_clipped_unless_asked_not_to():
    # landscape 300x200: y in the padded square from 0.1 * 300 - 50 = -20 to 0.9 * 300 - 50 = 220
    assert_box(box_to_pixels("[0.0, 0.1, 1.0, 0.9]", LANDSCAPE), (0, 0, 300, 200))
    assert_box(box_to_pixels("[0.0, 0.1, 1.0, 0.9]", LANDSCAPE, clip=False), (0, -20, 300, 220))


def test_box_to_pixels_takes_a_normalised_box_too():
    assert_box(box_to_pixels((0.4, 0.25, 0.6, 0.75), PORTRAIT), (10, 100, 90, 300))


@pytest.mark.parametrize(
    "pixels, image_size, mode, text",
    [
        ((30, 10, 150, 130), LANDSCAPE, "pad", "[0.10, 0.20, 0.50, 0.60]"),
        ((10, 100, 90, 300), PORTRAIT, "pad", "[0.40, 0.25, 0.60, 0.75]"),
        ((64, 128, 192, 256), SQUARE, "pad", "[0.25, 0.50, 0.75, 1.00]"),
        ((30, 40, 150, 120), LANDSCAPE, "preserve", "[0.10, 0.20, 0.50, 0.60]"),
        ((40, 100, 60, 300), PORTRAIT, "preserve", "[0.40, 0.25, 0.60, 0.75]"),
    ],
)
def test_pixels_to_box_text_writes_the_models_format_and_inverts_box_to_pixels(pixels, image_size, mode, text):
    assert pixels_to_box_text(pixels, image_size, mode) == text
    assert_box(box_to_pixels(text, image_size, mode), pixels)


def test_pixels_to_box_text_rounds_to_the_requested_decimals():
    # landscape: 45 / 300 = 0.15, (17 + 50) / 300 = 0.22333..., 299 / 300 = 0.99666..., (199 + 50) / 300 = 0.83
    assert pixels_to_box_text((45, 17, 299, 199), LANDSCAPE, decimals=3) == "[0.150, 0.223, 0.997, 0.830]"


@pytest.mark.parametrize("bad_box", [(10, 10, 5, 20), (0, 0, math.nan, 1), (1, 2, 3)])
def test_pixels_to_box_text_refuses_a_malformed_box(bad_box):
    with pytest.raises(ValueError, match="x1 <= x2"):
        pixels_to_box_text(bad_box, LANDSCAPE)


@pytest.mark.parametrize("image_size", [(0, 10), (10,), (10.5, 20), (-3, 4)])
def test_a_malformed_image_size_is_refused(image_size):
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        box_to_pixels("[0.1, 0.2, 0.3, 0.4]", image_size)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        box_to_pixels("[0.1, 0.2, 0.3, 0.4]", LANDSCAPE, "anyres")


def test_box_iou_matches_a_hand_computation():
    # overlap (5..10) x (0..10) = 50; union 100 + 100 - 50 = 150
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0


def test_post_process_grounding_maps_each_answer_with_its_own_image():
    answers = ["[0.1, 0.2, 0.5, 0.6]", "no idea", "[0.4, 0.25, 0.6, 0.75]"]
    boxes = post_process_grounding(answers, [LANDSCAPE, SQUARE, PORTRAIT])
    assert_box(boxes[0], (30, 10, 150, 130))
    assert boxes[1] is None
    assert_box(boxes[2], (10, 100, 90, 300))
    with pytest.raises(ValueError, match="2 texts but 1 image sizes"):
        post_process_grounding(answers[:2], [LANDSCAPE])


def test_post_process_grounding_maps_each_mode_and_gives_none_without_a_box():
    answers = ["[0.1, 0.2, 0.5, 0.6]", "[0.1, 0.2, 0.5, 0.6"]
    pad = post_process_grounding(answers, [LANDSCAPE, LANDSCAPE])
    assert_box(pad[0], (30, 10, 150, 130))
    assert pad[1] is None
    assert_box(post_process_grounding(answers[:1], [LANDSCAPE], "preserve")[0], (30, 40, 150, 120))
    assert_box(post_process_grounding(answers[:1], [LANDSCAPE], "pad")[0], (30, 10, 150, 130))
