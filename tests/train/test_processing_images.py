"""The image side of the processor against an independent, literal implementation of §4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from phi3v_data.tokens import num_image_tokens
from phi3v_train.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Phi3VImageProcessor


def official_steps(image: Image.Image, num_crops: int) -> tuple[torch.Tensor, list[int]]:
    """The official algorithm step by step: PIL transpose/resize/pad/transpose, ToTensor,
    Normalize (float32, torchvision's order), bicubic global view, crops, zero crops."""
    image = image.convert("RGB")
    width, height = image.size
    transposed = width < height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = image.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    target = int(np.ceil(new_h / 336) * 336)
    top = int((target - new_h) / 2)
    image = ImageOps.expand(image, border=(0, top, 0, target - new_h - top), fill=(255, 255, 255))
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    hd = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
    hd = hd.sub_(torch.tensor(OPENAI_CLIP_MEAN)[:, None, None])
    hd = hd.div_(torch.tensor(OPENAI_CLIP_STD)[:, None, None])
    glb = F.interpolate(hd[None], size=(336, 336), mode="bicubic")
    h, w = hd.shape[1:]
    crops = hd.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5)
    out = torch.cat([glb, crops.reshape(-1, 3, 336, 336)])
    out = torch.cat([out, torch.zeros(num_crops + 1 - out.shape[0], 3, 336, 336)])
    return out, [h, w]


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize(
    ("width", "height", "mode", "num_crops"),
    [
        (640, 480, "RGB", 4),
        (480, 640, "RGB", 4),  # portrait: padding ends up left/right
        (1000, 400, "RGBA", 4),  # alpha is dropped, not composited
        (401, 999, "L", 16),
        (1280, 720, "RGB", 16),
        (37, 500, "RGB", 4),  # extreme aspect ratio
        (336, 336, "RGB", 1),
    ],
)
def test_pixels_are_bit_identical_to_the_official_steps(width, height, mode, num_crops):
    image = random_image(width, height, mode)
    processor = Phi3VImageProcessor(num_crops=num_crops)
    out = processor([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    for k, img in enumerate([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]):
        expected, size = official_steps(img, num_crops)
        assert out["pixel_values"].dtype == torch.float32
        assert out["pixel_values"].shape == (2, num_crops + 1, 3, 336, 336)
        assert torch.equal(out["pixel_values"][k], expected)
        assert out["image_sizes"][k].tolist() == size
        assert out["num_img_tokens"][k] == num_image_tokens(width, height, num_crops)


def test_padding_crops_are_zero_and_padding_is_white():
    processor = Phi3VImageProcessor(num_crops=4)
    out = processor([Image.new("RGB", (1000, 400), (0, 0, 0))])  # 2 crops of 4
    pixels = out["pixel_values"][0]
    assert out["image_sizes"].tolist() == [[336, 672]]
    assert torch.count_nonzero(pixels[3:]) == 0
    white = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    # the 1000x400 image becomes 672x268 centred in 672x336: the top rows are white
    assert torch.allclose(pixels[1, :, 0, 0], white)
    assert torch.allclose(
        pixels[1, :, 100, 100], -torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)
    )


@pytest.mark.parametrize(
    ("width", "height", "crops4", "crops16"),
    [
        (336, 336, (672, 672, 757), (1344, 1344, 2509)),
        (1280, 720, (672, 672, 757), (1680, 1008, 2353)),
        (720, 1280, (672, 672, 757), (1008, 1680, 2377)),
        (640, 480, (672, 672, 757), (1344, 1008, 1921)),
        (1000, 400, (672, 336, 457), (1680, 672, 1621)),
    ],
)
def test_token_count_table_of_the_spec(width, height, crops4, crops16):
    for num_crops, (pad_w, pad_h, tokens) in ((4, crops4), (16, crops16)):
        processor = Phi3VImageProcessor(num_crops=num_crops)
        out = processor([Image.new("RGB", (width, height), "gray")])
        assert out["image_sizes"].tolist() == [[pad_h, pad_w]]
        assert out["num_img_tokens"] == [tokens]
        rows, cols = pad_h // 336, pad_w // 336
        assert tokens == (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
        assert rows * cols <= num_crops and math.gcd(pad_w, 336) == 336


def test_a_too_thin_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too thin"):
        Phi3VImageProcessor(num_crops=4)([Image.new("RGB", (4000, 1))])
