"""Tiny phi3v-data layouts for trainer tests: small images, short answers, real file layout.

``write_layout`` writes what ``phi3v-data convert`` writes (``images/`` plus
``<name>_<split>.jsonl``), UCF-101-shaped by default: frames under
``images/<split>/<Class>/<stem>.<k>.jpg`` and the Cookbook's classification prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

CLASSES = ("Archery", "BabyCrawling", "BalanceBeam", "Basketball")
COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))
PROMPT = "Classify the video into one of the following classes: " + ", ".join(CLASSES) + "."


def ucf_sample(split: str, index: int, frames: int) -> dict[str, Any]:
    """One UCF-101-shaped line: ``frames`` frame paths, the class name as the answer."""
    label = CLASSES[index % len(CLASSES)]
    stem = f"v_{label}_g{index:02d}_c01"
    return {
        "id": f"{split}-{index:010d}",
        "source": "ucf101",
        "conversations": [
            {
                "images": [f"{split}/{label}/{stem}.{k}.jpg" for k in range(frames)],
                "user": PROMPT,
                "assistant": label,
            }
        ],
    }


def write_images(root: Path, lines: list[dict[str, Any]], size: tuple[int, int]) -> None:
    """Write every image the lines name (solid colours per class, slightly varied)."""
    for line in lines:
        for turn in line["conversations"]:
            for k, relative in enumerate(turn["images"]):
                path = root / "images" / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                label = relative.split("/")[1] if relative.count("/") >= 2 else ""
                base = COLORS[CLASSES.index(label)] if label in CLASSES else (90, 90, 90)
                color = tuple(min(255, c + 5 * k) for c in base)
                Image.new("RGB", size, color).save(path)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def write_layout(
    root: Path,
    *,
    name: str = "ucf101",
    train: int = 4,
    val: int = 2,
    frames: int = 1,
    size: tuple[int, int] = (48, 32),
) -> Path:
    """A converted layout in ``root``: ``<name>_train.jsonl``, ``<name>_val.jsonl``, images."""
    splits = {"train": [ucf_sample("train", i, frames) for i in range(train)]}
    if val:
        splits["val"] = [ucf_sample("val", train + i, frames) for i in range(val)]
    for split, lines in splits.items():
        write_images(root, lines, size)
        write_jsonl(root / f"{name}_{split}.jsonl", lines)
    return root


def text_sample(index: int, question: str, answer: str) -> dict[str, Any]:
    """A sample without images (short sequences make fast memorisation runs)."""
    return {
        "id": f"text-{index}",
        "source": "test",
        "conversations": [{"images": [], "user": question, "assistant": answer}],
    }
