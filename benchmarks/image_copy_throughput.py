"""Image-dataset conversion throughput: ``phi3v-data convert`` against a re-encoding loop.

Generates an image folder (``<Class>/*.jpg`` photos and ``*.png`` pages), then converts it
to the phi3v layout two ways, in this run:

- baseline, what a typical conversion script does: for every image, Pillow open,
  ``.convert("RGB")``, save as JPEG (a full decode and re-encode), one process;
- phi3v: ``phi3v_data.convert("imagefolder", ...)``, which checks each file and copies its
  bytes (hard-links with ``--link``), with 1 worker and with every core.

Both produce the same jsonl lines. Prints images/s and the ratios.

    python benchmarks/image_copy_throughput.py [--images 2000]

Target (issue 3): at least 500 images/s copied.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from phi3v_data import convert


def make_folder(root: Path, count: int) -> None:
    """Half 640x480 JPEG photos, half 850x1100 grayscale PNG pages, in 10 class folders."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    for index in range(count):
        folder = root / f"class{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2:
            pixels = (ramp[None, :, None] + rng.normal(0, 12, (480, 640, 3))).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.jpg", quality=90)
        else:
            page = np.full((1100, 850), 255, np.uint8)
            rows = rng.integers(50, 1050, 40)
            for row in rows:
                page[row : row + 6, 60 : 60 + int(rng.integers(200, 700))] = 30
            Image.fromarray(page, "L").save(folder / f"{index}.png", optimize=False)


def baseline(src: Path, out: Path) -> int:
    """Decode and re-encode every image as JPEG, the way many conversion scripts do."""
    count = 0
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".jpg", ".png"):
            continue
        target = out / "images" / path.relative_to(src).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").save(target, quality=95)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, help="Keep the generated folder here.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phi3v-images-"))
    src = workdir / "src"
    try:
        if not src.is_dir():
            make_folder(src, args.images)
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
        print(f"{args.images:,} images, {size:.0f} MB")
        start = time.perf_counter()
        baseline(src, workdir / "baseline")
        base = args.images / (time.perf_counter() - start)
        print(f"baseline (decode + re-encode, 1 process): {base:8.0f} images/s")
        for workers, link in ((1, False), (os.cpu_count() or 1, False), (1, True)):
            out = workdir / f"phi3v-{workers}-{link}"
            start = time.perf_counter()
            manifest = convert(
                "imagefolder", src=src, out_dir=out, workers=workers, link=link, progress=False
            )
            rate = args.images / (time.perf_counter() - start)
            assert manifest["samples"] == args.images and not manifest["skipped"]
            how = "hard-link" if link else "copy"
            print(
                f"phi3v convert ({how}, {workers} worker{'s' if workers > 1 else ''}): "
                f"{rate:8.0f} images/s  ({rate / base:.1f}x baseline)"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
