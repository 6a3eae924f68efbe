"""Images per second of the Phi-3.5-V image processor on one core, against a plain baseline.

The baseline is the straightforward per-image implementation: PIL transpose / resize / pad /
transpose, float64 numpy normalisation, ``torch.nn.functional.interpolate`` for the global
view, then reshape and zero-pad the crops. Both run in the same process on one thread, on a
1700x2200 document page at num_crops 16 and a 320x240 video frame at num_crops 4; the
outputs must agree to 1e-5. Prints the figures and the speed-up.

    python benchmarks/processor_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps

from phi3v_train.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Phi3VImageProcessor


def baseline(image: Image.Image, num_crops: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The textbook implementation of the official HD transform, one image at a time."""
    image = image.convert("RGB")
    width, height = image.size
    transposed = width < height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = image.size
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    target = math.ceil(new_h / 336) * 336
    top = (target - new_h) // 2
    image = ImageOps.expand(image, border=(0, top, 0, target - new_h - top), fill=(255, 255, 255))
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    array = np.asarray(image, dtype=np.float64) / 255.0
    array = (array - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    hd = torch.from_numpy(array).permute(2, 0, 1).float().contiguous()
    glb = F.interpolate(hd[None], size=(336, 336), mode="bicubic", align_corners=False)
    _, h, w = hd.shape
    crops = hd.reshape(3, h // 336, 336, w // 336, 336).permute(1, 3, 0, 2, 4)
    crops = crops.reshape(-1, 3, 336, 336)
    out = torch.cat([glb, crops])
    pad = torch.zeros(num_crops + 1 - out.shape[0], 3, 336, 336)
    return torch.cat([out, pad]), (h, w)


def synthetic_page(width: int, height: int) -> Image.Image:
    """A deterministic page with text-like strokes and a photo-like gradient block."""
    rng = np.random.default_rng(0)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    for y in range(80, height - 80, 28):
        x = 80
        while x < width - 120:
            word = int(rng.integers(20, 110))
            ink = tuple(int(v) for v in rng.integers(0, 90, 3))
            draw.rectangle([x, y, x + word, y + 12], fill=ink)
            x += word + 14
    gradient = np.linspace(0, 255, width // 2, dtype=np.uint8)[None, :, None]
    block = np.repeat(np.repeat(gradient, height // 4, axis=0), 3, axis=2)
    noise = rng.integers(0, 40, block.shape, dtype=np.uint8)
    page.paste(Image.fromarray(block + noise), (width // 4, height // 2))
    return page


def synthetic_frame(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        fn()
        calls += 1
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("page 1700x2200, num_crops 16", synthetic_page(1700, 2200), 16),
        ("frame 320x240, num_crops 4", synthetic_frame(320, 240), 4),
    ]
    print(f"torch {torch.__version__}, 1 thread, {args.seconds:g} s per measurement")
    for name, image, num_crops in cases:
        processor = Phi3VImageProcessor(num_crops=num_crops)
        fast, fast_size = processor.preprocess_one(image)
        slow, slow_size = baseline(image, num_crops)
        diff = (fast - slow).abs().max().item()
        if fast_size != slow_size or diff > 1e-5:
            raise SystemExit(f"{name}: outputs differ (sizes {fast_size}/{slow_size}, {diff:.2e})")
        base = rate(lambda image=image, n=num_crops: baseline(image, n), args.seconds)
        ours = rate(lambda image=image, p=processor: p.preprocess_one(image), args.seconds)
        print(
            f"{name}: baseline {base:7.1f} img/s | phi3v {ours:7.1f} img/s | "
            f"x{ours / base:.2f} | max |diff| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
