"""Shared pytest fixtures: tiny layouts written on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def sample(
    sample_id: str = "s1",
    images: list[str] | None = None,
    user: str = "What is shown?",
    assistant: str = "A cat.",
    **extra: Any,
) -> dict[str, Any]:
    """A valid sample as a dict; tests break one thing at a time."""
    line: dict[str, Any] = {
        "id": sample_id,
        "source": "test",
        "conversations": [
            {
                "images": ["a.jpg"] if images is None else images,
                "user": user,
                "assistant": assistant,
            }
        ],
    }
    line.update(extra)
    return line


@pytest.fixture
def layout(tmp_path: Path) -> Callable[..., Path]:
    """Write ``lines`` (dicts or raw bytes) to ``<tmp>/data_train.jsonl`` with images/a.jpg,
    images/b.png (and any ``images`` given as name -> (width, height)); return the file."""

    def make(
        lines: list[dict[str, Any] | bytes], images: dict[str, tuple[int, int]] | None = None
    ) -> Path:
        root = tmp_path / "images"
        root.mkdir(exist_ok=True)
        wanted = {"a.jpg": (64, 48), "b.png": (40, 30), **(images or {})}
        for name, size in wanted.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (200, 10, 10)).save(target)
        path = tmp_path / "data_train.jsonl"
        path.write_bytes(
            b"".join(
                (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
            )
        )
        return path

    return make
