"""Phi-3.5-V image-token arithmetic: the spec's table and the crop-grid invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phi3v_data.tokens import hd_size, num_image_tokens

# reference/phi3v-model.md §4, "Token counts (computed)".
TABLE = [
    ((336, 336), 4, (672, 672), 757),
    ((336, 336), 16, (1344, 1344), 2509),
    ((1280, 720), 4, (672, 672), 757),
    ((1280, 720), 16, (1680, 1008), 2353),
    ((720, 1280), 4, (672, 672), 757),
    ((720, 1280), 16, (1008, 1680), 2377),
    ((640, 480), 4, (672, 672), 757),
    ((640, 480), 16, (1344, 1008), 1921),
    ((1000, 400), 4, (672, 336), 457),
    ((1000, 400), 16, (1680, 672), 1621),
]


@pytest.mark.parametrize(("size", "num_crops", "padded", "tokens"), TABLE)
def test_spec_table(size, num_crops, padded, tokens):
    assert hd_size(*size, num_crops) == padded
    assert num_image_tokens(*size, num_crops) == tokens


def test_while_loop_not_square_root():
    # Ratio 2.5 at 4 crops: sqrt(4 * 2.5) = 3.16 -> 3 columns = 6 crops; the loop gives 2.
    assert hd_size(1000, 400, 4) == (672, 336)
    assert int(math.sqrt(4 * 1000 / 400)) == 3


def test_portrait_is_handled_transposed():
    width, height = hd_size(400, 1000, 4)
    assert (width, height) == (336, 672)
    assert num_image_tokens(400, 1000, 4) == (2 + 1) * 144 + 1 + (2 + 1) * 12


def test_one_crop_still_has_a_global_view():
    # num_crops=1 -> one 336x336 crop plus the global image (PhiCookBook #214).
    assert hd_size(320, 240, 1) == (336, 336)
    assert num_image_tokens(320, 240, 1) == 2 * 144 + 1 + 2 * 12


@pytest.mark.parametrize(("width", "height", "num_crops"), [(0, 10, 4), (10, -1, 4), (10, 10, 0)])
def test_invalid_arguments(width, height, num_crops):
    with pytest.raises(ValueError):
        hd_size(width, height, num_crops)


def test_too_thin_image_is_refused():
    with pytest.raises(ValueError, match="too thin"):
        num_image_tokens(20000, 3, 4)


@given(
    st.integers(1, 6000),
    st.integers(1, 6000),
    st.integers(1, 16),
)
def test_grid_invariants(width, height, num_crops):
    try:
        padded_w, padded_h = hd_size(width, height, num_crops)
    except ValueError:
        assert max(width, height) / min(width, height) > 336  # only absurd aspect ratios
        return
    assert padded_w % 336 == 0 and padded_h % 336 == 0
    cols, rows = padded_w // 336, padded_h // 336
    assert 1 <= cols * rows <= num_crops
    # The long side is exactly scale * 336 and keeps its orientation.
    assert (padded_w >= padded_h) == (width >= height) or padded_w == padded_h
    assert (
        num_image_tokens(width, height, num_crops) == (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
    )
