"""``validate``: every check a dataset must pass before it is worth GPU time.

One pass over each file: JSON and schema (pydantic, compiled), unique ids, safe image
paths that exist inside the images root, optionally a full decode of every image, and
optionally the exact token length of every sample against a maximum. Every problem is
reported with file, line, id and field; nothing raises on bad input.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from phi3v_data.errors import describe_validation_error
from phi3v_data.jsonl import MAX_LINE_BYTES, Line, LineProblem, iter_line_blocks
from phi3v_data.layout import SKIPPED, ImageResolver, images_root_for
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
        checker = _FileChecker(
            Path(path),
            report,
            images_root=Path(images_root) if images_root else None,
            check_images=check_images,
            decode=decode,
            counter=counter,
            max_line_bytes=max_line_bytes,
        )
        report.files.append(checker.run())
    return report


class _FileChecker:
    """All checks of one file; problems go straight into the shared report."""

    def __init__(
        self,
        path: Path,
        report: Report,
        *,
        images_root: Path | None,
        check_images: bool,
        decode: bool,
        counter: TextTokenCounter | None,
        max_line_bytes: int,
    ) -> None:
        self.path = path
        self.name = str(path)
        self.report = report
        self.counter = counter
        self.max_line_bytes = max_line_bytes
        root = images_root or images_root_for(path)
        self.summary = FileReport(self.name, str(root))
        self.seen_ids: dict[str, int] = {}
        self.images: _ImageChecker | None = None
        if check_images:
            if root.is_dir():
                self.images = _ImageChecker(root, decode, need_size=counter is not None)
            else:
                self.error("missing-image", None, None, None, f"images folder not found: {root}")

    def error(
        self, kind: str, line: int | None, sample_id: str | None, fld: str | None, message: str
    ) -> None:
        self.report.errors.append(Problem(kind, self.name, line, sample_id, fld, message))
        self.summary.errors += 1

    def run(self) -> FileReport:
        if self.path.name == SKIPPED:
            self.error(
                "file",
                None,
                None,
                None,
                "this is the skip report of 'phi3v-data "
                "convert', not a dataset file; validate the <name>_<split>.jsonl files",
            )
            return self.summary
        validate_json = Sample.__pydantic_validator__.validate_json
        samples = valid = 0
        check_sample = self.check_sample
        try:
            for block in iter_line_blocks(self.path, max_line_bytes=self.max_line_bytes):
                samples += len(block)
                for item in block:
                    if type(item) is LineProblem:
                        self.error("line", item.number, None, None, item.message)
                        continue
                    try:
                        sample = validate_json(item.data)
                    except ValidationError as exc:
                        self.schema_errors(item, exc)
                        continue
                    valid += check_sample(sample, item.number)
        except OSError as exc:
            self.error("file", None, None, None, f"cannot read file: {exc.strerror or exc}")
        self.summary.samples, self.summary.valid = samples, valid
        return self.summary

    def schema_errors(self, item: Line, exc: ValidationError) -> None:
        sample_id = _best_effort_id(item.data)
        for described in describe_validation_error(exc):
            self.error(described.kind, item.number, sample_id, described.field, described.message)

    def check_sample(self, sample: Sample, line: int) -> bool:
        """Checks beyond the schema; True when the sample has no error."""
        clean = True
        first = self.seen_ids.setdefault(sample.id, line)
        if first != line:
            self.error("duplicate-id", line, sample.id, "id", f"id also used on line {first}")
            clean = False
        last = sample.conversations[-1]
        if not last.assistant and (sample.meta or {}).get("labeled") is not False:
            self.report.warnings.append(
                Problem(
                    "empty-answer",
                    self.name,
                    line,
                    sample.id,
                    f"conversations[{len(sample.conversations) - 1}].assistant",
                    "empty assistant answer; mark unlabeled samples with meta.labeled: false",
                )
            )
        if self.images is not None:
            sizes = self.check_images(sample, line)
            clean = clean and sizes is not None
            if self.counter is not None and sizes is not None:
                clean = self.measure(sample, line, sizes) and clean
        return clean

    def check_images(self, sample: Sample, line: int) -> list[ImageInfo | None] | None:
        """Infos of the sample's images in order, or None when any of them has a problem."""
        assert self.images is not None
        infos: list[ImageInfo | None] = []
        broken = False
        for t, turn in enumerate(sample.conversations):
            for i, relative in enumerate(turn.images):
                kind, message, info = self.images.check(relative)
                if kind is not None:
                    fld = f"conversations[{t}].images[{i}]"
                    self.error(kind, line, sample.id, fld, message or "")
                    broken = True
                infos.append(info)
        return None if broken else infos

    def measure(self, sample: Sample, line: int, infos: list[ImageInfo | None]) -> bool:
        """Record the sample's token length; False when it overflows or cannot be sized."""
        assert self.counter is not None and self.report.lengths is not None
        num_crops = self.report.num_crops or 0
        image_tokens = 0
        for index, info in enumerate(infos):
            assert info is not None
            try:
                image_tokens += num_image_tokens(info.width, info.height, num_crops)
            except ValueError as exc:
                self.error("bad-image", line, sample.id, f"images[{index}]", str(exc))
                return False
        length = SampleLength(
            self.name, line, sample.id, len(infos), image_tokens, self.counter.count(sample)
        )
        self.report.lengths.append(length)
        limit = self.report.max_length
        if limit is not None and length.total > limit:
            how = "exact" if self.counter.exact else "estimated"
            self.error(
                "overflow",
                line,
                sample.id,
                None,
                f"{length.total:,} tokens ({how}: {image_tokens:,} image + "
                f"{length.text_tokens:,} text) exceeds --max-length {limit:,}",
            )
            return False
        return True


def _best_effort_id(data: bytes) -> str | None:
    """The id of a line that failed validation, if the line is JSON with a usable id."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), (str, int)):
        return str(value["id"])
    return None
