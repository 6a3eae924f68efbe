"""``validate``: every check a dataset must pass before it is worth GPU time.

One pass over each file: JSON and schema (pydantic, compiled), unique ids, safe image
paths that exist inside the images root, optionally a full decode of every image, and
optionally the exact token length of every sample against a maximum. Every problem is
reported with file, line, id and field; nothing raises on bad input.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from phi3v_data.errors import describe_validation_error
from phi3v_data.jsonl import MAX_LINE_BYTES, LineProblem, iter_lines
from phi3v_data.layout import ImageResolver, images_root_for
from phi3v_data.lengths import TextTokenCounter, text_token_counter
from phi3v_data.media import ImageInfo, ImageProblem, probe_image
from phi3v_data.schema import Sample
from phi3v_data.tokens import num_image_tokens


@dataclass(slots=True)
class Problem:
    """One error or warning, located as precisely as the input allows."""

    kind: str
    file: str
    line: int | None
    id: str | None
    field: str | None
    message: str

    def location(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.id is not None:
            where += f" [id {self.id}]"
        if self.field:
            where += f" {self.field}"
        return where

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"


@dataclass(slots=True)
class SampleLength:
    """Token cost of one sample at the report's ``num_crops``."""

    file: str
    line: int
    id: str
    images: int
    image_tokens: int
    text_tokens: int

    @property
    def total(self) -> int:
        return self.image_tokens + self.text_tokens


@dataclass
class FileReport:
    path: str
    images_root: str
    samples: int = 0
    valid: int = 0
    errors: int = 0


@dataclass
class Report:
    """What :func:`validate` found. ``ok`` is True when there are no errors."""

    files: list[FileReport] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    lengths: list[SampleLength] | None = None
    num_crops: int | None = None
    max_length: int | None = None
    exact_lengths: bool = False

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.files)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def overflows(self) -> list[SampleLength]:
        if self.lengths is None or self.max_length is None:
            return []
        return [s for s in self.lengths if s.total > self.max_length]

    def to_dict(self) -> dict[str, Any]:
        """The ``--format json`` document."""
        document: dict[str, Any] = {
            "ok": self.ok,
            "files": [asdict(f) for f in self.files],
            "samples": self.samples,
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
        }
        if self.lengths is not None:
            document["tokens"] = {
                "num_crops": self.num_crops,
                "max_length": self.max_length,
                "exact": self.exact_lengths,
                "summary": length_summary(self.lengths),
                "samples": [{**asdict(s), "total": s.total} for s in self.lengths],
            }
        return document


def length_summary(lengths: list[SampleLength]) -> dict[str, float | int] | None:
    """min / median / p95 / max of the total token length."""
    totals = sorted(s.total for s in lengths)
    if not totals:
        return None
    return {
        "min": totals[0],
        "median": statistics.median(totals),
        "p95": totals[min(len(totals) - 1, int(0.95 * len(totals)))],
        "max": totals[-1],
    }


class _ImageChecker:
    """Existence, decoding and size of images, each file looked at once per run."""

    def __init__(self, root: Path, decode: bool, need_size: bool) -> None:
        self.resolver = ImageResolver(root)
        self.decode = decode
        self.need_size = need_size
        self._probed: dict[str, ImageInfo | str] = {}

    def check(self, relative: str) -> tuple[str | None, str | None, ImageInfo | None]:
        """(kind, message, info) for one path; kind is None when the image is fine."""
        problem = self.resolver.problem(relative)
        if problem is not None:
            kind = "unsafe-path" if "symlink" in problem else "missing-image"
            return kind, problem, None
        if not (self.decode or self.need_size):
            return None, None, None
        cached = self._probed.get(relative)
        if cached is None:
            try:
                cached = probe_image(self.resolver.full_path(relative), decode=self.decode)
            except ImageProblem as error:
                cached = f"{error}: {self.resolver.full_path(relative)}"
            self._probed[relative] = cached
        if isinstance(cached, str):
            return "bad-image", cached, None
        return None, None, cached


def validate(
    paths: Iterable[str | os.PathLike[str]],
    *,
    images_root: str | os.PathLike[str] | None = None,
    check_images: bool = True,
    decode: bool = False,
    num_crops: int | None = None,
    max_length: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Report:
    """Check JSONL files against the data contract and return a :class:`Report`.

    ``images_root`` defaults to ``images/`` beside each file. ``decode`` fully decodes
    every image. ``num_crops`` adds token lengths per sample; with ``max_length`` the
    samples longer than that are errors. ``tokenizer`` (a model folder or tokenizer.json)
    makes text counts exact; otherwise they are a stated estimate.
    """
    if max_length is not None and num_crops is None:
        raise ValueError("max_length needs num_crops: the image token count depends on it")
    counter = text_token_counter(tokenizer) if num_crops is not None else None
    report = Report(
        num_crops=num_crops,
        max_length=max_length,
        lengths=[] if num_crops is not None else None,
        exact_lengths=bool(counter and counter.exact),
    )
    for path in paths:
        _validate_file(
            Path(path),
            report,
            images_root=Path(images_root) if images_root else None,
            check_images=check_images,
            decode=decode,
            counter=counter,
            max_line_bytes=max_line_bytes,
        )
    return report


def _validate_file(
    path: Path,
    report: Report,
    *,
    images_root: Path | None,
    check_images: bool,
    decode: bool,
    counter: TextTokenCounter | None,
    max_line_bytes: int,
) -> None:
    root = images_root or images_root_for(path)
    summary = FileReport(str(path), str(root))
    report.files.append(summary)
    file_name = str(path)
    errors_before = len(report.errors)

    def error(kind: str, line: int | None, sample_id: str | None, fld: str | None, msg: str):
        report.errors.append(Problem(kind, file_name, line, sample_id, fld, msg))

    images: _ImageChecker | None = None
    if check_images:
        if root.is_dir():
            images = _ImageChecker(root, decode, need_size=counter is not None)
        else:
            error("missing-image", None, None, None, f"images folder not found: {root}")

    seen_ids: dict[str, int] = {}
    for item in _lines_or_read_error(path, max_line_bytes, error):
        summary.samples += 1
        if isinstance(item, LineProblem):
            error("line", item.number, None, None, item.message)
            continue
        try:
            sample = Sample.model_validate_json(item.data)
        except ValidationError as exc:
            sample_id = _best_effort_id(item.data)
            for described in describe_validation_error(exc):
                error(described.kind, item.number, sample_id, described.field, described.message)
            continue
        clean = True
        first = seen_ids.setdefault(sample.id, item.number)
        if first != item.number:
            error("duplicate-id", item.number, sample.id, "id", f"id also used on line {first}")
            clean = False
        sizes: list[ImageInfo | None] = []
        if images is not None:
            for t, turn in enumerate(sample.conversations):
                for i, relative in enumerate(turn.images):
                    kind, message, info = images.check(relative)
                    if kind is not None:
                        fld = f"conversations[{t}].images[{i}]"
                        error(kind, item.number, sample.id, fld, message or "")
                        clean = False
                    sizes.append(info)
        unlabeled = (sample.meta or {}).get("labeled") is False
        if not sample.conversations[-1].assistant and not unlabeled:
            report.warnings.append(
                Problem(
                    "empty-answer",
                    file_name,
                    item.number,
                    sample.id,
                    f"conversations[{len(sample.conversations) - 1}].assistant",
                    "empty assistant answer; mark unlabeled samples with meta.labeled: false",
                )
            )
        if clean:
            summary.valid += 1
        if counter is not None and images is not None:
            _measure(sample, item.number, sizes, counter, report, file_name, error)
    summary.errors = len(report.errors) - errors_before


def _measure(sample, line, sizes, counter, report, file_name, error) -> None:
    image_tokens = 0
    for index, info in enumerate(sizes):
        if info is None:
            return
        try:
            image_tokens += num_image_tokens(info.width, info.height, report.num_crops)
        except ValueError as exc:
            error("bad-image", line, sample.id, f"images[{index}]", str(exc))
            return
    length = SampleLength(
        file_name, line, sample.id, len(sizes), image_tokens, counter.count(sample)
    )
    report.lengths.append(length)
    if report.max_length is not None and length.total > report.max_length:
        kind = "exact" if counter.exact else "estimated"
        error(
            "overflow",
            line,
            sample.id,
            None,
            f"{length.total:,} tokens ({kind}: {image_tokens:,} image + "
            f"{length.text_tokens:,} text) exceeds --max-length {report.max_length:,}",
        )


def _lines_or_read_error(path: Path, max_line_bytes: int, error) -> Iterator[Any]:
    try:
        yield from iter_lines(path, max_line_bytes=max_line_bytes)
    except OSError as exc:
        error("file", None, None, None, f"cannot read file: {exc.strerror or exc}")


def _best_effort_id(data: bytes) -> str | None:
    """The id of a line that failed validation, if the line is JSON with a usable id."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), (str, int)):
        return str(value["id"])
    return None
