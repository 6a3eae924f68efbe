"""Throughput of ``phi3v_data.validate`` against a straightforward baseline, in one run.

Generates UCF-101-style samples (8 frames each, one classification turn), then measures
samples/s for (1) schema checks only and (2) schema plus image existence checks, for our
validator and for a baseline that does the same checks the obvious way: ``json.loads``
plus a plain pydantic model with Python validators, and ``os.path`` calls per image.

    python benchmarks/validate_throughput.py [--samples 200000] [--workdir DIR]

Targets (issue 2): at least 100,000 samples/s on one core for schema checks, and at least
2x the baseline. Everything runs in one process, so it uses one core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, field_validator, model_validator

from phi3v_data.validate import validate

CLASSES = [f"Class{n:03d}" for n in range(101)]
PROMPT = "Classify the video into one of the following classes: " + ", ".join(CLASSES) + "."
FRAMES = 8


def frame_paths(index: int) -> list[str]:
    label = CLASSES[index % len(CLASSES)]
    stem = f"v_{label}_g{index % 25 + 1:02d}_c{index:06d}"
    return [f"train/{label}/{stem}.{k}.jpg" for k in range(FRAMES)]


def write_dataset(directory: Path, samples: int, with_images: bool) -> Path:
    path = directory / "ucf101_train.jsonl"
    with open(path, "wb") as file:
        for index in range(samples):
            images = frame_paths(index)
            line = {
                "id": f"train-{index:010d}",
                "source": "ucf101",
                "conversations": [
                    {"images": images, "user": PROMPT, "assistant": CLASSES[index % 101]}
                ],
                "meta": {"frames": [int(k * 90 / FRAMES) for k in range(FRAMES)], "fps": 25.0},
            }
            file.write(orjson.dumps(line) + b"\n")
    if with_images:
        root = directory / "images"
        for label in CLASSES:
            (root / "train" / label).mkdir(parents=True, exist_ok=True)
        for index in range(samples):
            for relative in frame_paths(index):
                (root / relative).touch()
    return path


# --- the baseline: the same rules, written the obvious way -------------------------------

TAG = re.compile(r"<\|image_(\d+)\|>")


class BaselineTurn(BaseModel):
    images: list[str] = []
    user: str
    assistant: str

    @field_validator("images")
    @classmethod
    def safe_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            parts = path.split("/")
            if not path or path.startswith("/") or "\\" in path or ".." in parts or "" in parts:
                raise ValueError(f"unsafe path {path!r}")
        return paths

    @model_validator(mode="after")
    def tags(self) -> BaselineTurn:
        numbers = [int(n) for n in TAG.findall(self.user)]
        if numbers and sorted(numbers) != list(range(1, len(self.images) + 1)):
            raise ValueError("bad image tags")
        if "<image>" in self.user:
            raise ValueError("LLaVA tag")
        return self


class BaselineSample(BaseModel):
    id: str
    source: str
    conversations: list[BaselineTurn]
    meta: dict[str, Any] | None = None


def baseline(path: Path, check_images: bool) -> int:
    root = os.path.realpath(path.parent / "images")
    seen: set[str] = set()
    errors = 0
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                sample = BaselineSample.model_validate(json.loads(line))
            except (ValueError, TypeError):
                errors += 1
                continue
            if sample.id in seen:
                errors += 1
            seen.add(sample.id)
            if check_images:
                for turn in sample.conversations:
                    for image in turn.images:
                        full = os.path.realpath(os.path.join(root, image))
                        if not full.startswith(root + os.sep) or not os.path.isfile(full):
                            errors += 1
    return errors


def timed(function: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs: the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
        assert result == 0 or result is True, f"benchmark data should be clean, got {result}"
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, help="Keep generated data here (default: temp).")
    parser.add_argument("--skip-images", action="store_true", help="Schema checks only.")
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many runs.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phi3v-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        path = write_dataset(workdir, args.samples, with_images=not args.skip_images)
        size_mb = path.stat().st_size / 1e6
        print(
            f"generated {args.samples:,} samples ({size_mb:.0f} MB, "
            f"{args.samples * FRAMES:,} image paths) in {time.perf_counter() - start:.1f}s"
        )
        modes = [("schema", False)] + ([] if args.skip_images else [("schema+exists", True)])
        for name, check_images in modes:
            ours = timed(lambda c=check_images: validate([path], check_images=c).ok, args.repeat)
            base = timed(lambda c=check_images: baseline(path, c), args.repeat)
            print(
                f"{name:14s} phi3v {args.samples / ours:>10,.0f} samples/s   "
                f"baseline {args.samples / base:>10,.0f} samples/s   ratio {base / ours:.2f}x"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
