"""``stats``: what a dataset looks like, in the numbers that decide memory and speed.

Samples per split and source, turns and images per sample, image sizes and their token
cost at a given ``num_crops``, and text lengths. Lines that fail the schema are counted
and skipped (``validate`` says why).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from phi3v_data.jsonl import Line, iter_lines
from phi3v_data.layout import images_root_for
from phi3v_data.lengths import text_token_counter
from phi3v_data.media import ImageInfo, ImageProblem, probe_image
from phi3v_data.schema import Sample
from phi3v_data.tokens import num_image_tokens


def split_of(path: str | os.PathLike[str]) -> str:
    """``ucf101_train.jsonl`` -> ``train`` (the part after the last underscore)."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[1] if "_" in stem else stem


def distribution(values: Iterable[float]) -> dict[str, float] | None:
    """count / min / mean / median / p95 / max of some numbers (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def stats(
    paths: Iterable[str | os.PathLike[str]],
    *,
    images_root: str | os.PathLike[str] | None = None,
    num_crops: int = 4,
    tokenizer: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Summarise JSONL files; the result is the ``--format json`` document."""
    counter = text_token_counter(tokenizer)
    splits: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    turns: list[int] = []
    images_per_sample: list[int] = []
    user_chars: list[int] = []
    assistant_chars: list[int] = []
    text_tokens: list[int] = []
    sample_image_tokens: list[int] = []
    totals: list[int] = []
    sizes: dict[Path, ImageInfo | None] = {}
    files: list[dict[str, Any]] = []
    for path in paths:
        root = Path(images_root) if images_root else images_root_for(path)
        entry = {"path": str(path), "split": split_of(path), "samples": 0, "invalid": 0}
        files.append(entry)
        for item in iter_lines(path):
            sample = _parse(item)
            if sample is None:
                entry["invalid"] += 1
                continue
            entry["samples"] += 1
            splits[entry["split"]] += 1
            sources[sample.source] += 1
            turns.append(len(sample.conversations))
            paths_in_sample = sample.image_paths()
            images_per_sample.append(len(paths_in_sample))
            user_chars.append(sum(len(t.user) for t in sample.conversations))
            assistant_chars.append(sum(len(t.assistant) for t in sample.conversations))
            text = counter.count(sample)
            text_tokens.append(text)
            infos = [_size(root / p, sizes) for p in paths_in_sample]
            if all(info is not None for info in infos):
                image_tokens = sum(
                    _tokens(info.width, info.height, num_crops) for info in infos if info
                )
                sample_image_tokens.append(image_tokens)
                totals.append(image_tokens + text)
    known = [info for info in sizes.values() if info is not None]
    size_counts = Counter(f"{i.width}x{i.height}" for i in known)
    return {
        "files": files,
        "samples": sum(f["samples"] for f in files),
        "invalid_lines": sum(f["invalid"] for f in files),
        "splits": dict(splits),
        "sources": dict(sources),
        "turns_per_sample": distribution(turns),
        "images_per_sample": distribution(images_per_sample),
        "images": {
            "distinct": len(sizes),
            "unreadable": len(sizes) - len(known),
            "width": distribution(i.width for i in known),
            "height": distribution(i.height for i in known),
            "most_common_sizes": dict(size_counts.most_common(5)),
            "formats": dict(Counter(i.format for i in known)),
        },
        "num_crops": num_crops,
        "image_tokens_per_image": distribution(
            _tokens(i.width, i.height, num_crops) for i in known
        ),
        "image_tokens_per_sample": distribution(sample_image_tokens),
        "text": {
            "user_chars": distribution(user_chars),
            "assistant_chars": distribution(assistant_chars),
            "tokens": distribution(text_tokens),
            "tokens_exact": counter.exact,
        },
        "sequence_length": distribution(totals),
    }


def _parse(item: Any) -> Sample | None:
    if not isinstance(item, Line):
        return None
    try:
        return Sample.model_validate_json(item.data)
    except ValidationError:
        return None


def _size(path: Path, cache: dict[Path, ImageInfo | None]) -> ImageInfo | None:
    if path not in cache:
        try:
            cache[path] = probe_image(path)
        except (ImageProblem, OSError):
            cache[path] = None
    return cache[path]


def _tokens(width: int, height: int, num_crops: int) -> int:
    try:
        return num_image_tokens(width, height, num_crops)
    except ValueError:
        return 0
