"""Phi-3.5-vision image-token arithmetic.

The number of tokens an image costs is a closed function of its size and ``num_crops``, so
sequence lengths can be known exactly before any pixel is decoded or any GPU is touched.
This module is pure math and is shared by ``phi3v_data`` (validate, stats) and
``phi3v_train`` (the processor), so the two can never disagree.

The crop grid follows the official ``HD_transform``: portrait images are handled as if
transposed, the scale comes from a while-loop (not ``sqrt(num_crops * ratio)``, which can
exceed ``num_crops``), the long side becomes ``scale * 336`` and the short side is padded
up to a multiple of 336.
"""

from __future__ import annotations

import math

CROP_SIZE = 336
TOKENS_PER_CROP = 144  # 24x24 CLIP patches merged 2x2 -> 12x12
TOKENS_PER_CROP_ROW = 12  # one separator (sub_GN) after each row of merged features


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """Return ``(padded_width, padded_height)`` of the HD image the processor crops.

    Both values are multiples of 336 and ``(w // 336) * (h // 336) <= num_crops``.
    Raises ``ValueError`` for non-positive sizes and for images so thin that the resized
    short side would be 0 pixels (the official processor crashes on those).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be at least 1, got {num_crops}")
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_long = int(scale * CROP_SIZE)
    new_short = int(new_long / ratio)
    if new_short < 1:
        raise ValueError(
            f"image {width}x{height} is too thin for Phi-3.5-V: its short side would be "
            f"resized to 0 pixels (aspect ratio {ratio:.0f}:1)"
        )
    padded_short = math.ceil(new_short / CROP_SIZE) * CROP_SIZE
    if transposed:
        return padded_short, new_long
    return new_long, padded_short


def num_image_tokens(width: int, height: int, num_crops: int) -> int:
    """Return how many ``<|image_N|>`` placeholder tokens one image of this size becomes.

    ``(rows * cols + 1) * 144`` merged features (the crops plus the global view), one
    separator after each of the ``12 * rows + 12`` feature rows, and one ``glb_GN``.
    """
    padded_width, padded_height = hd_size(width, height, num_crops)
    rows, cols = padded_height // CROP_SIZE, padded_width // CROP_SIZE
    return (rows * cols + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * TOKENS_PER_CROP_ROW
