"""``docvqa``: SP-DocVQA questions about document pages, as the Cookbook's DocVQA script asks them.

Layouts of ``--src`` (detected, in this order):

- the RRC release: a folder holding ``spdocvqa_qas/`` (``{train,val}_v1.0_withQT.json`` or the
  older ``{train,val}_v1.0.json``, and ``test_v1.0.json``) beside the page images in
  ``spdocvqa_images/``, ``images/`` or ``documents/`` (``--src`` may also be ``spdocvqa_qas/``
  itself). Every ``image`` field says ``documents/<page>.png`` whatever the tarball was called,
  so it is resolved against the dataset root first and then by its basename in the images folder.
- HF parquet copies: HuggingFaceM4/DocumentVQA and nielsr/docvqa_1200_examples
  (``data/<split>-*.parquet``), lmms-lab/DocVQA (``DocVQA/<split>-*.parquet``, string
  questionIds), a folder of such parquet files, or one parquet file. nielsr's question is
  ``query["en"]`` and its ``id`` is the questionId.

The user text is ``"{question}\\nAnswer briefly."`` (the Cookbook's prompt), the answer the first
ground truth; ``meta.answers`` keeps every ground truth, because ANLS scores a prediction against
the closest one. A question without answers (the public test set; null or empty ``answers``) is
written with an empty answer and ``meta.labeled: false`` so it can still be predicted and
submitted. With ``--labeled-only`` such questions are not planned at all: they are left out by
request, not lost, so they are not listed in ``skipped.jsonl``, and a split without any answer
produces no file.

Pages go to ``images/docvqa/<ucsf_id>_<page>.<ext>`` (the RRC file name; nielsr rows, which carry
no page name, are named by a hash of their bytes), so a page asked about by several questions is
stored once, and the real format picks the extension (the RRC release has JPEG bytes under .png
names). Parquet rows are never loaded whole: the plan lists (file, row group, row) from the parquet
footer, and each worker reads only the row group it needs, keeping the last one, because a split's
rows arrive in file order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from phi3v_data.converter import (
    SAFE_NAME,
    Built,
    Converter,
    ConverterOptions,
    Item,
    Skip,
    SkipItem,
    SourceError,
)
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

PROMPT = "{question}\nAnswer briefly."
IMAGES_PREFIX = "docvqa"
QAS_DIR = "spdocvqa_qas"
IMAGE_DIRS = ("spdocvqa_images", "images", "documents")
PARQUET_DIRS = ("data", "DocVQA")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
# RRC annotation files per split, newest name first.
QAS_FILES = {split: (f"{split}_v1.0_withQT.json", f"{split}_v1.0.json") for split in SPLIT_ORDER}
# Facts kept in meta, when the source has them, besides questionId and answers.
META_KEYS = ("question_types", "docId", "ucsf_document_id", "ucsf_document_page_no")
PARQUET_COLUMNS = ("questionId", "id", "question", "query", "image", "answers", *META_KEYS)

EXPECTED_LAYOUTS = (
    "expected one of: the RRC release (a folder with spdocvqa_qas/*.json and the page images in "
    "spdocvqa_images/, images/ or documents/); HuggingFaceM4/DocumentVQA or "
    "nielsr/docvqa_1200_examples (data/{train,validation,test}-*.parquet); lmms-lab/DocVQA "
    "(DocVQA/{validation,test}-*.parquet); a folder of such .parquet files; one .parquet file"
)


class DocVQAOptions(ConverterOptions):
    labeled_only: bool = Field(
        False,
        description="Leave out questions without answers (the public test set) instead of "
        "writing them with an empty answer and meta.labeled false.",
    )


@dataclass(frozen=True, slots=True)
class RRCLayout:
    """The RRC release: (split, annotation file) in output order, and where the pages are."""

    root: Path
    files: list[tuple[str, Path]]
    images: Path


@dataclass(frozen=True, slots=True)
class ParquetLayout:
    """Parquet copies: (split, file) in output order."""

    root: Path
    files: list[tuple[str, Path]]


@register
class DocVQA(Converter):
    name = "docvqa"
    summary = "SP-DocVQA: the RRC release (spdocvqa_qas/ + images) or its HF parquet copies"
    Options = DocVQAOptions
    options: DocVQAOptions

    def prepare(self) -> None:
        super().prepare()
        assert self.src is not None
        self.layout = _detect_layout(self.src)
        self._row_groups = RowGroupCache()

    def plan(self) -> Iterator[Item | Skip]:
        if isinstance(self.layout, RRCLayout):
            yield from self._plan_rrc(self.layout)
        else:
            yield from self._plan_parquet(self.layout)

    def build(self, item: Item, media: MediaWriter) -> Built:
        if isinstance(self.layout, RRCLayout):
            record = item.payload
            image = media.copy_image(_find_page(self.layout, record["image"]), _rrc_stem(record))
        else:
            path, group, row = item.payload
            record, data, page = _parquet_record(self._row_groups.row(path, group, row))
            origin = f"questionId {record['questionId']}"
            image = media.write_image_bytes(data, page, origin=origin)
        return _built(record, image)

    # --- the RRC release --------------------------------------------------------------------

    def _plan_rrc(self, layout: RRCLayout) -> Iterator[Item | Skip]:
        for split, path in layout.files:
            name = path.relative_to(layout.root).as_posix()
            try:
                records = _read_annotations(path)
            except ValueError as error:
                yield Skip(split, name, f"not a DocVQA annotation file: {error}")
                continue
            if self.options.labeled_only and not any(map(_has_answers, records)):
                continue
            for index, record in enumerate(records):
                yield from self._rrc_entry(split, name, index, record)

    def _rrc_entry(self, split: str, name: str, index: int, record: Any) -> Iterator[Item | Skip]:
        question_id = record.get("questionId") if isinstance(record, dict) else None
        origin = f"{name} questionId {question_id}" if question_id is not None else name
        problem = _record_problem(record)
        if problem or question_id is None:
            origin = f"{origin} (record {index})"
        if problem:
            yield Skip(split, origin, problem)
        elif _has_answers(record) or not self.options.labeled_only:
            yield Item(split, origin, record)

    # --- parquet copies ---------------------------------------------------------------------

    def _plan_parquet(self, layout: ParquetLayout) -> Iterator[Item]:
        for split, path in layout.files:
            name = path.relative_to(layout.root).as_posix() if path != layout.root else path.name
            parquet = pq.ParquetFile(path)
            labeled = _labeled_rows(parquet) if self.options.labeled_only else None
            if labeled is not None and not any(labeled):
                continue
            position = 0
            for group in range(parquet.num_row_groups):
                for row in range(parquet.metadata.row_group(group).num_rows):
                    if labeled is None or labeled[position]:
                        yield Item(split, f"{name} row {position}", (str(path), group, row))
                    position += 1


# --- layout detection -------------------------------------------------------------------------


def _detect_layout(src: Path) -> RRCLayout | ParquetLayout:
    """The layout ``src`` is in, or a :class:`SourceError` naming every layout we read."""
    root = src.parent if src.name == QAS_DIR else src
    if (root / QAS_DIR).is_dir():
        return _rrc_layout(root)
    files = _parquet_files(src)
    if not files:
        raise SourceError(f"--src {src} is not a DocVQA layout; {EXPECTED_LAYOUTS}")
    for _, path in files:
        _check_parquet_columns(path)
    return ParquetLayout(src, files)


def _rrc_layout(root: Path) -> RRCLayout:
    files = []
    for split in SPLIT_ORDER:
        found = [root / QAS_DIR / name for name in QAS_FILES[split]]
        files += [(split, path) for path in found if path.is_file()][:1]
    if not files:
        names = ", ".join(name for names in QAS_FILES.values() for name in names)
        raise SourceError(f"{root / QAS_DIR} holds none of the annotation files {names}")
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None:
        raise SourceError(
            f"{root} has {QAS_DIR}/ but no page images folder ({', '.join(IMAGE_DIRS)})"
        )
    return RRCLayout(root, files, images)


def _parquet_files(src: Path) -> list[tuple[str, Path]]:
    """(split, file) for a parquet file, a folder of them, or a dataset root with data/ or
    DocVQA/; ordered train, val, test, then anything else."""
    if src.is_file():
        paths = [src] if src.suffix == ".parquet" else []
    else:
        folders = [src / d for d in PARQUET_DIRS if (src / d).is_dir()] + [src]
        paths = next((sorted(f.glob("*.parquet")) for f in folders if any(f.glob("*.parquet"))), [])
    named = [(_split_from_file_name(path), path) for path in paths]
    rank = {split: n for n, split in enumerate(SPLIT_ORDER)}
    return sorted(named, key=lambda entry: (rank.get(entry[0], len(rank)), entry[1].name))


def _split_from_file_name(path: Path) -> str:
    """``validation-00000-of-00001.parquet`` -> ``val``: HF names files ``<split>-NNNNN-of-NNNNN``;
    a bare ``<split>.parquet`` works too, and any other stem is taken as the split's name."""
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", path.stem)
    return SPLIT_NAMES.get(stem.lower(), stem)


def _check_parquet_columns(path: Path) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as error:
        raise SourceError(f"{path} is not a readable parquet file: {error}") from None
    if "image" not in names or "answers" not in names or not names & {"question", "query"}:
        raise SourceError(
            f"{path} has columns {', '.join(sorted(names))}; a DocVQA parquet file needs "
            "image, answers, and question (or nielsr's query struct)"
        )


# --- records ----------------------------------------------------------------------------------


def _read_annotations(path: Path) -> list[Any]:
    """The ``data`` list of an RRC annotation file; ValueError when the file is not one."""
    try:
        content = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ValueError("no 'data' list at the top level")
    return content["data"]


def _record_problem(record: Any) -> str | None:
    """Why an RRC record cannot become a sample, or None."""
    if not isinstance(record, dict):
        return "malformed record: not a JSON object"
    for key in ("question", "image"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            return f"malformed record: no {key!r}"
    answers = record.get("answers")
    if answers is not None and not (
        isinstance(answers, list) and all(isinstance(a, str) for a in answers)
    ):
        return "malformed record: 'answers' is not a list of strings"
    return None


def _has_answers(record: Any) -> bool:
    return isinstance(record, dict) and bool(record.get("answers"))


def _labeled_rows(parquet: pq.ParquetFile) -> list[bool]:
    """Whether each row has answers; reads the answers column only."""
    answers = parquet.read(columns=["answers"]).column("answers")
    return [bool(value) for value in answers.to_pylist()]


def _parquet_record(row: dict[str, Any]) -> tuple[dict[str, Any], bytes, str]:
    """(the row as an RRC-style record, the page's bytes, the page's destination stem)."""
    query = row.get("query") or {}
    question = row.get("question") or (query.get("en") if isinstance(query, dict) else None)
    question_id = row["questionId"] if "questionId" in row else row.get("id")
    record = {key: row.get(key) for key in META_KEYS}
    record.update(questionId=question_id, question=question, answers=row.get("answers"))
    problem = _record_problem({**record, "image": "embedded"})
    if problem:
        raise SkipItem(f"questionId {question_id}: {problem}")
    image = row.get("image")
    data = image.get("bytes") if isinstance(image, dict) else image
    if not isinstance(data, bytes) or not data:
        raise SkipItem(f"questionId {question_id}: the row has no image bytes")
    path = image.get("path") if isinstance(image, dict) else None
    return record, data, _parquet_stem(record, path, data)


def _parquet_stem(record: dict[str, Any], path: str | None, data: bytes) -> str:
    """The RRC page name when the row says it, else a hash of the bytes: one file per page."""
    ucsf, page = record.get("ucsf_document_id"), record.get("ucsf_document_page_no")
    candidates = [f"{ucsf}_{page}" if ucsf and page else None]
    if path:
        candidates.append(PurePosixPath(path.replace("\\", "/")).stem)
    name = next((c for c in candidates if c and re.match(SAFE_NAME, c)), None)
    return f"{IMAGES_PREFIX}/{name or hashlib.sha1(data).hexdigest()[:20]}"


def _rrc_stem(record: dict[str, Any]) -> str:
    stem = PurePosixPath(record["image"].replace("\\", "/")).stem
    if not re.match(SAFE_NAME, stem):
        stem = hashlib.sha1(record["image"].encode()).hexdigest()[:20]
    return f"{IMAGES_PREFIX}/{stem}"


def _find_page(layout: RRCLayout, image: str) -> Path:
    """``documents/x.png`` relative to the dataset root, else ``x.png`` in the images folder."""
    relative = PurePosixPath(image.replace("\\", "/"))
    candidates = [layout.images / relative.name]
    if not relative.is_absolute() and ".." not in relative.parts:
        candidates.insert(0, layout.root / relative)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c.relative_to(layout.root)) for c in candidates)
    raise SkipItem(f"page image not found: {image} (looked for {looked})")


def _built(record: dict[str, Any], image: str) -> Built:
    answers = list(record.get("answers") or [])
    meta: dict[str, Any] = {
        "questionId": record.get("questionId"),
        "answers": answers,
        "labeled": bool(answers),
    }
    meta.update({key: record[key] for key in META_KEYS if record.get(key) is not None})
    turn = Turn(
        images=[image],
        user=PROMPT.format(question=record["question"]),
        assistant=answers[0] if answers else "",
    )
    return Built([turn], meta)


class RowGroupCache:
    """The last parquet row group this process read (only the columns DocVQA needs).

    A worker gets a split's rows in file order, so keeping one row group means each is read
    about once per worker, and memory stays at one row group, not a 9.6 GB file.
    """

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._table: pa.Table | None = None

    def row(self, path: str, group: int, row: int) -> dict[str, Any]:
        if self._key != (path, group) or self._table is None:
            self._table = None  # let the previous row group go before reading the next
            parquet = pq.ParquetFile(path)
            columns = [name for name in PARQUET_COLUMNS if name in parquet.schema_arrow.names]
            self._table = parquet.read_row_group(group, columns=columns)
            self._key = (path, group)
        return self._table.slice(row, 1).to_pylist()[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_table": None}  # a worker starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._key, self._table = state["_key"], state["_table"]
