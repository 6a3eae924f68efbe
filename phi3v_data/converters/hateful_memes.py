"""``hateful_memes``: the Facebook Hateful Memes release, one meme per sample.

``--src`` is the release's ``data/`` folder (or the folder holding it): the jsonl files and
``img/``. Both phases' file names are read — phase 1 ``train``, ``dev``, ``test``; phase 2
``train``, ``dev_seen``, ``dev_unseen``, ``test_seen``, ``test_unseen`` — and each file's stem
is its output split. A line is ``{"id": 42953, "img": "img/42953.png", "label": 0, "text":
"..."}``. ``img`` is taken as written, relative to the jsonl's folder, never rebuilt from
``id``: ids below 10000 are stored zero-padded (``img/01235.png`` for id 1235).

The meme text goes into the prompt, because the model cannot be expected to read a meme's
caption reliably and the Cookbook-style data states it. Prompt (fixed)::

    Here is a meme. Its text reads: "<text>"
    Is this meme hateful? Answer yes or no.

Label 1 answers ``yes``, label 0 ``no``. ``meta.label`` keeps the number, since the official
metric is AUROC over it, not exact match; ``meta.id`` keeps the original id. Test files have
no labels: their memes are written with an empty answer and ``meta.labeled: false`` (so the
trainer can still predict on them), or left out with ``--labeled-only``. Images are stored
once per ``img`` path (``hateful_memes/img/<name>``), however many splits list them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
from pydantic import Field

from phi3v_data.converter import Built, Converter, ConverterOptions, Item, Skip, SourceError
from phi3v_data.jsonl import Line, iter_lines
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

PROMPT = 'Here is a meme. Its text reads: "{text}"\nIs this meme hateful? Answer yes or no.'
ANSWERS = {0: "no", 1: "yes"}
# Phase-1 and phase-2 file stems, in output order.
SPLITS = ("train", "dev", "dev_seen", "dev_unseen", "test", "test_seen", "test_unseen")
IMAGE_FOLDER = "img"
IMAGE_ARCHIVE = "img.tar.gz"


class HatefulMemesOptions(ConverterOptions):
    labeled_only: bool = Field(
        False,
        description="Leave out memes without a label (the test files) instead of writing "
        "them with an empty answer and meta.labeled false.",
    )


@dataclass(frozen=True, slots=True)
class Meme:
    """What a worker needs for one meme."""

    id: int | str  # the release's own id, kept in meta
    image: str
    dest_stem: str  # hateful_memes/<img path without its extension>
    text: str
    label: int | None


@register
class HatefulMemes(Converter):
    name = "hateful_memes"
    summary = "Hateful Memes (data/ with img/ and the phase-1 or phase-2 jsonl files)"
    Options = HatefulMemesOptions
    options: HatefulMemesOptions
    data_dir: Path  # set by prepare(): the folder of the jsonl files and img/

    def prepare(self) -> None:
        super().prepare()
        assert self.src is not None
        data_dir = next((d for d in (self.src, self.src / "data") if _split_files(d)), None)
        if data_dir is None:
            raise SourceError(
                f"--src {self.src}: expected the Hateful Memes data/ folder (or its parent), "
                "holding img/ and " + ", ".join(f"{s}.jsonl" for s in SPLITS)
            )
        if not (data_dir / IMAGE_FOLDER).is_dir():
            if (data_dir / IMAGE_ARCHIVE).is_file():
                raise SourceError(
                    f"{data_dir} has the images only as {IMAGE_ARCHIVE}; extract it first: "
                    f"tar -xzf {data_dir / IMAGE_ARCHIVE} -C {data_dir}"
                )
            raise SourceError(f"{data_dir} has no {IMAGE_FOLDER}/ folder beside the jsonl files")
        self.data_dir = data_dir

    def plan(self) -> Iterator[Item | Skip]:
        assert self.src is not None
        for split, path in _split_files(self.data_dir):
            shown = path.relative_to(self.src).as_posix()
            for line in iter_lines(path):
                origin = f"{shown}:{line.number}"
                if not isinstance(line, Line):
                    yield Skip(split, origin, line.message)
                    continue
                entry = self._plan_line(split, origin, line.data)
                if entry is not None:
                    yield entry

    def _plan_line(self, split: str, origin: str, data: bytes) -> Item | Skip | None:
        """An Item, a Skip saying what is wrong, or None for an unlabeled meme left out."""
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            return Skip(split, origin, f"invalid JSON: {error}")
        problem = _record_problem(record)
        if problem:
            return Skip(split, origin, problem)
        label = record.get("label")
        if label is None and self.options.labeled_only:
            return None
        image = PurePosixPath(record["img"].replace("\\", "/"))
        meme = Meme(
            id=record["id"],
            image=str(self.data_dir / image),
            dest_stem=f"hateful_memes/{image.with_suffix('').as_posix()}",
            text=record["text"],
            label=label,
        )
        return Item(split, f"{origin} (id {record['id']})", meme)

    def build(self, item: Item, media: MediaWriter) -> Built:
        meme: Meme = item.payload
        stored = media.copy_image(meme.image, meme.dest_stem)
        labeled = meme.label is not None
        turn = Turn(
            images=[stored],
            user=PROMPT.format(text=meme.text),
            assistant=ANSWERS[meme.label] if labeled else "",
        )
        meta: dict[str, Any] = {"id": meme.id}
        if labeled:
            meta["label"] = meme.label
        meta["labeled"] = labeled
        return Built([turn], meta)


def _split_files(folder: Path) -> list[tuple[str, Path]]:
    """(split, path) of the known jsonl files in a folder, in output order."""
    return [(s, folder / f"{s}.jsonl") for s in SPLITS if (folder / f"{s}.jsonl").is_file()]


def _record_problem(record: Any) -> str | None:
    """Why a parsed line cannot become a sample, or None."""
    if not isinstance(record, dict):
        return "line is not a JSON object"
    if isinstance(record.get("id"), bool) or not isinstance(record.get("id"), (int, str)):
        return "no id"
    image = record.get("img")
    if not isinstance(image, str) or not image.strip():
        return "no img path"
    parts = PurePosixPath(image.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        return f"img path {image!r} leaves the data folder"
    if not isinstance(record.get("text"), str):
        return "no text"
    label = record.get("label")
    if label is not None and (type(label) is not int or label not in ANSWERS):
        return f"label must be 0 or 1, got {label!r}"
    return None
