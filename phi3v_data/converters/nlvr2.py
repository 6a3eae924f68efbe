"""``nlvr2``: the NLVR2 json lines with their image pairs, as true/false questions.

``--src`` is the NLVR2 root: ``data/`` holds the json lines of every split (``train.json``,
``dev.json``, ``test1.json``, ``test2.json``, ``balanced/balanced_{dev,test1}.json`` and
``unbalanced/unbalanced_{dev,test1}.json``); the images lie in any of the layouts people
have (the direct download's ``images/train/<directory>/``, flat ``images/<split>/`` or
``<split>/`` folders). The ``data/`` folder itself is accepted too, with the images beside it.

Identifier ``split-set-pair-sentence`` names the images ``split-set-pair-img0`` (left) and
``-img1`` (right); they are found by stem whatever their extension ("despite the extension
of .png, not all images are actually PNGs"). The folders are indexed once per image split,
because a flat train folder holds about 170,000 files and listing it per item would take
hours. A pair is written once (``nlvr2/<split>/<split-set-pair>-img{0,1}``) however many
sentences use it; balanced/unbalanced lines reuse the dev/test1 images.

Prompt (fixed, so that evaluation can rely on it)::

    The first image is the left image and the second image is the right image.
    Is the following statement true or false? "<sentence>" Answer True or False.

(one line, with a space between the sentences). The answer is ``True`` or ``False``, the
label's own spelling, so NLVR2's metric (a case-insensitive comparison with ``label``)
scores a generated answer directly. ``meta`` keeps ``identifier`` (consistency is computed
over it), the original ``label`` string, ``directory`` (train only: build validation sets from
whole directories, or 8-image sets leak), ``synset`` and ``query``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, field_validator

from phi3v_data.converter import Built, Converter, ConverterOptions, Item, Skip, SourceError
from phi3v_data.jsonl import Line, iter_lines
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

PROMPT = (
    "The first image is the left image and the second image is the right image. "
    'Is the following statement true or false? "{sentence}" Answer True or False.'
)
# NLVR2 labels are the strings "True"/"False"; each maps to one fixed answer.
ANSWERS = {"true": "True", "false": "False"}
# Output split -> its json lines below data/, in output order.
SPLIT_FILES = {
    "train": "train.json",
    "dev": "dev.json",
    "test1": "test1.json",
    "test2": "test2.json",
    "balanced_dev": "balanced/balanced_dev.json",
    "balanced_test1": "balanced/balanced_test1.json",
    "unbalanced_dev": "unbalanced/unbalanced_dev.json",
    "unbalanced_test1": "unbalanced/unbalanced_test1.json",
}
# split-set-pair-sentence; word characters only, since the parts become image file names.
IDENTIFIER = re.compile(r"\w+-\w+-\w+-\w+", re.ASCII)
META_KEYS = ("directory", "synset", "query")
SIDES = ("left", "right")


class Nlvr2Options(ConverterOptions):
    splits: str = Field(
        "",
        description="Comma-separated splits to convert (" + ", ".join(SPLIT_FILES) + "); "
        "default: every split whose file is present.",
    )

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, value: str) -> str:
        """Canonical order and spelling, so ``dev,train`` and ``train, dev`` are one identity."""
        wanted = {name.strip() for name in value.split(",") if name.strip()}
        unknown = sorted(wanted - set(SPLIT_FILES))
        if unknown:
            raise ValueError(
                f"unknown split(s) {', '.join(unknown)}; known: {', '.join(SPLIT_FILES)}"
            )
        return ",".join(name for name in SPLIT_FILES if name in wanted)


@dataclass(frozen=True, slots=True)
class Pair:
    """What a worker needs for one sentence: two resolved image files and the texts."""

    images: tuple[str, str]
    dest_stem: str  # nlvr2/<image split>/<split-set-pair>; -img0 / -img1 are appended
    sentence: str
    answer: str
    meta: dict[str, Any]


@register
class Nlvr2(Converter):
    name = "nlvr2"
    summary = "NLVR2 (data/*.json and images/train/<directory>/, <split>/ or images/<split>/)"
    Options = Nlvr2Options
    options: Nlvr2Options
    root: Path  # set by prepare(): the NLVR2 root, where image folders are searched
    data_dir: Path
    splits: list[str]

    def prepare(self) -> None:
        super().prepare()
        assert self.src is not None
        located = _locate(self.src)
        if located is None:
            raise SourceError(
                f"--src {self.src}: expected the NLVR2 root, holding data/train.json, "
                "data/dev.json, data/test1.json, data/test2.json or "
                "data/{balanced,unbalanced}/*.json, with the images in "
                "images/train/<directory>/, <split>/ or images/<split>/"
            )
        self.root, self.data_dir = located
        present = [name for name in SPLIT_FILES if (self.data_dir / SPLIT_FILES[name]).is_file()]
        wanted = self.options.splits.split(",") if self.options.splits else present
        missing = [name for name in wanted if name not in present]
        if missing:
            files = ", ".join(str(self.data_dir / SPLIT_FILES[name]) for name in missing)
            raise SourceError(f"--splits asks for {', '.join(missing)}, but {files} is missing")
        self.splits = wanted

    def plan(self) -> Iterator[Item | Skip]:
        indexes: dict[str, ImageIndex] = {}
        for split in self.splits:
            path = self.data_dir / SPLIT_FILES[split]
            shown = path.relative_to(self.root).as_posix()
            for line in iter_lines(path):
                origin = f"{shown}:{line.number}"
                if not isinstance(line, Line):
                    yield Skip(split, origin, line.message)
                    continue
                yield self._plan_line(split, origin, line.data, indexes)

    def _plan_line(
        self, split: str, origin: str, data: bytes, indexes: dict[str, ImageIndex]
    ) -> Item | Skip:
        """An Item with both images found, or a Skip that says what is wrong with the line."""
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            return Skip(split, origin, f"invalid JSON: {error}")
        problem = _record_problem(record)
        if problem:
            return Skip(split, origin, problem)
        identifier = record["identifier"]
        origin = f"{origin} ({identifier})"
        image_split, set_id, pair_id, _ = identifier.split("-")
        pair = f"{image_split}-{set_id}-{pair_id}"
        if image_split not in indexes:
            indexes[image_split] = ImageIndex.scan(self.root, image_split)
        index = indexes[image_split]
        found = [index.find(f"{pair}-img{side}") for side in (0, 1)]
        if None in found:
            return Skip(split, origin, index.missing_reason(pair, found))
        meta = {"identifier": identifier, "label": record["label"]}
        meta.update({key: record[key] for key in META_KEYS if key in record})
        payload = Pair(
            images=(str(found[0]), str(found[1])),
            dest_stem=f"nlvr2/{image_split}/{pair}",
            sentence=record["sentence"],
            answer=ANSWERS[record["label"].lower()],
            meta=meta,
        )
        return Item(split, origin, payload)

    def build(self, item: Item, media: MediaWriter) -> Built:
        pair: Pair = item.payload
        left, right = (
            media.copy_image(path, f"{pair.dest_stem}-img{side}")
            for side, path in enumerate(pair.images)
        )
        user = PROMPT.format(sentence=pair.sentence)
        return Built([Turn(images=[left, right], user=user, assistant=pair.answer)], pair.meta)


def _locate(src: Path) -> tuple[Path, Path] | None:
    """(root, data folder) for an NLVR2 root or its ``data/`` folder; None if neither."""
    for root, data in ((src, src / "data"), (src.parent, src)):
        if any((data / name).is_file() for name in SPLIT_FILES.values()):
            return root, data
    return None


def _record_problem(record: Any) -> str | None:
    """Why a parsed line cannot become a sample, or None."""
    if not isinstance(record, dict):
        return "line is not a JSON object"
    identifier = record.get("identifier")
    if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
        return f"identifier {identifier!r} is not <split>-<set>-<pair>-<sentence>"
    if not isinstance(record.get("sentence"), str) or not record["sentence"].strip():
        return "no sentence"
    label = record.get("label")
    if not isinstance(label, str) or label.lower() not in ANSWERS:
        return f'label must be "True" or "False", got {label!r}'
    return None


@dataclass(slots=True)
class ImageIndex:
    """Every file of one image split's folders by stem, first found winning.

    Search order: ``images/<split>/<directory>/``, ``images/<split>/``,
    ``<split>/<directory>/``, ``<split>/``. Within a folder a ``.png`` beats other extensions
    of the same stem, so the choice never depends on directory listing order.
    """

    searched: list[str]  # the folder patterns that exist, relative to the root, for messages
    files: dict[str, Path]

    @classmethod
    def scan(cls, root: Path, image_split: str) -> ImageIndex:
        searched: list[str] = []
        files: dict[str, Path] = {}
        for base in (root / "images" / image_split, root / image_split):
            if not base.is_dir():
                continue
            shown = base.relative_to(root).as_posix()
            buckets = sorted(p for p in base.iterdir() if p.is_dir())
            if buckets:
                searched.append(f"{shown}/<directory>/")
            searched.append(f"{shown}/")
            for folder in [*buckets, base]:
                for stem, path in _files_by_stem(folder):
                    files.setdefault(stem, path)
        if not searched:
            searched = [f"images/{image_split}/ (absent)", f"{image_split}/ (absent)"]
        return cls(searched, files)

    def find(self, stem: str) -> Path | None:
        return self.files.get(stem)

    def missing_reason(self, pair: str, found: list[Path | None]) -> str:
        """Which image is missing, and where it was looked for."""
        return "; ".join(
            f"{SIDES[side]} image {pair}-img{side}.* not found in {', '.join(self.searched)}"
            for side, path in enumerate(found)
            if path is None
        )


def _files_by_stem(folder: Path) -> list[tuple[str, Path]]:
    """(stem, path) of a folder's visible files, ``.png`` first among equal stems."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            stem, dot, suffix = entry.name.rpartition(".")
            if not dot:
                stem, suffix = entry.name, ""
            entries.append((stem, suffix.lower() != "png", entry.name))
    return [(stem, folder / name) for stem, _, name in sorted(entries)]
