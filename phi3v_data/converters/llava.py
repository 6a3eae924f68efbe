"""``llava``: LLaVA-style JSON or JSONL, the format most vision trainers accept.

A record is ``{"id", "image": "a.jpg" | ["a.jpg", ...], "conversations": [{"from",
"value"}, ...]}``; ``--src`` is a JSON file holding a list of records, a JSONL file with one
record per line, or a folder of such files. Image paths are relative to ``--image-folder``
(default: the folder of the file that names them).

What the converter decides, and why:

- ``<image>`` tags are renumbered ``<|image_1|>..`` *per turn*: the phi3v contract lists a
  turn's images in that turn, and a human message's images are those whose tags it holds
  (in order of appearance). A record with images but no tags puts them all on the first
  human turn and leaves its text tag-free; the trainer puts the tags in front.
- ``from`` is ``human``/``gpt`` (``user``/``assistant`` too) and must alternate, starting
  with a human message and ending with a gpt answer. System messages before the first human
  message go into ``meta.system`` (Phi-3.5-V's prompt format has no system role, so the
  trainer ignores them; evaluation can still read them); one in mid-conversation is a skip.
- A record that breaks these rules (tag count != image count, gpt before human, a value that
  is not a string, a missing or broken image, ...) is skipped with ``file:line (id ...)``
  and the reason, never dropped silently.
- ``meta`` keeps the original ``id`` and ``origin`` (``file:line``).

The split is ``--split``, else the file name's last ``_``/``-`` part when it is a split name
(``llava_val.json`` -> ``val``), else ``train``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from phi3v_data.converter import (
    SAFE_NAME,
    Built,
    Item,
    RecordFileConverter,
    RecordFileOptions,
    Skip,
    SkipItem,
    SourceError,
    local_image,
)
from phi3v_data.errors import type_name
from phi3v_data.jsonl import LineProblem, iter_lines
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
IMAGE_TAG = re.compile(r"<image>")
PEEK_BYTES = 1 << 20
_WHITESPACE = re.compile(r"\s*")

EXPECTED = (
    "expected a LLaVA JSON file (a list of {id, image, conversations: [{from, value}]}), "
    "a JSONL file of such records, or a folder of .json/.jsonl files"
)


class LlavaOptions(RecordFileOptions):
    name: str = Field(
        "llava", pattern=SAFE_NAME, description="Output file prefix: <name>_<split>.jsonl."
    )


@dataclass(frozen=True, slots=True)
class PlannedTurn:
    """One turn, ready to build: user text with ``<|image_N|>`` tags, images to copy."""

    user: str
    assistant: str
    images: tuple[tuple[str, str], ...] = ()  # (source file, destination stem)


@dataclass(frozen=True, slots=True)
class PlannedRecord:
    """What a worker needs for one record: small and picklable, no pixels."""

    turns: tuple[PlannedTurn, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record read from a file, or the reason it could not be read."""

    line: int
    value: Any = None
    problem: str | None = None


@register
class Llava(RecordFileConverter):
    name = "llava"
    summary = "LLaVA JSON/JSONL: {id, image, conversations: [{from: human|gpt, value}]}"
    Options = LlavaOptions
    options: LlavaOptions

    suffixes = (".json", ".jsonl")
    expected = EXPECTED

    def check_first_record(self, path: Path) -> None:
        _check_first_record(path)

    def plan(self) -> Iterator[Item | Skip]:
        for path in self.files():
            split, folder = self.split_and_folder(path)
            for raw in read_records(path):
                origin = _origin(path, raw)
                if raw.problem is not None:
                    yield Skip(split, origin, raw.problem)
                    continue
                try:
                    planned = plan_record(raw.value, folder, f"{path.name}:{raw.line}")
                except SkipItem as reason:
                    yield Skip(split, origin, str(reason))
                    continue
                yield Item(split, origin, planned)

    def build(self, item: Item, media: MediaWriter) -> Built:
        planned: PlannedRecord = item.payload
        turns = [
            Turn(
                images=[media.copy_image(source, stem) for source, stem in turn.images],
                user=turn.user,
                assistant=turn.assistant,
            )
            for turn in planned.turns
        ]
        return Built(turns, dict(planned.meta))


# --- reading ---------------------------------------------------------------------------------


def read_records(path: Path) -> Iterator[RawRecord]:
    """Every record of a JSON-list or JSONL file with its line number, in file order."""
    if _first_byte(path) == b"[":
        yield from _read_json_list(path)
        return
    for line in iter_lines(path):
        if isinstance(line, LineProblem):
            yield RawRecord(line.number, problem=line.message)
            continue
        try:
            yield RawRecord(line.number, orjson.loads(line.data))
        except orjson.JSONDecodeError as error:
            yield RawRecord(line.number, problem=f"invalid JSON: {error}")


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as file:
        head = file.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1]


def _read_json_list(path: Path) -> Iterator[RawRecord]:
    """The elements of a top-level JSON list, each with the line it starts on.

    Decoding element by element (instead of ``json.load``) gives every record a line number
    for the skip report, and a syntax error loses only the records after it.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        yield RawRecord(1, problem=f"file is not UTF-8 text ({error.reason}); nothing read")
        return
    decoder = json.JSONDecoder()
    position = _WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted = 1, 0
    while position < len(text) and text[position] != "]":
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            yield _broken_list(error.lineno, f"invalid JSON: {error.msg} (column {error.colno})")
            return
        yield RawRecord(line, value)
        position = _WHITESPACE.match(text, end).end()
        if text.startswith(",", position):
            position = _WHITESPACE.match(text, position + 1).end()
        elif position < len(text) and not text.startswith("]", position):
            line += text.count("\n", counted, position)
            yield _broken_list(line, "invalid JSON: expected ',' or ']' after a record")
            return
    if position >= len(text):
        yield _broken_list(text.count("\n") + 1, "invalid JSON: the list is not closed with ']'")


def _broken_list(line: int, reason: str) -> RawRecord:
    return RawRecord(line, problem=f"{reason}; the rest of the file cannot be read")


def _check_first_record(path: Path) -> None:
    """Refuse, before any output exists, a file that is not LLaVA data at all."""
    first = _peek_first_record(path)
    if first is None:
        return
    if isinstance(first, dict) and "conversations" in first:
        return
    hint = ""
    if isinstance(first, dict) and "messages" in first:
        hint = " (OpenAI messages format? use 'phi3v-data convert messages')"
    raise SourceError(f"{path}: the first record is not a LLaVA record{hint}; {EXPECTED}")


def _peek_first_record(path: Path) -> Any:
    """The first record, or None when the file is empty of records or it is too long to
    peek at (then the per-record checks report it)."""
    kind = _first_byte(path)
    if kind == b"[":
        with open(path, "rb") as file:
            head = file.read(PEEK_BYTES).removeprefix(b"\xef\xbb\xbf")
        text = head.decode("utf-8", errors="ignore")
        start = _WHITESPACE.match(text, text.index("[") + 1).end()
        if text.startswith("]", start):
            return None
        try:
            return json.JSONDecoder().raw_decode(text, start)[0]
        except json.JSONDecodeError as error:
            if len(head) < PEEK_BYTES:
                message = f"{path}: invalid JSON at line {error.lineno}: {error.msg}"
                raise SourceError(message) from None
            return None
    if not kind:
        raise SourceError(f"{path} is empty; {EXPECTED}")
    if kind != b"{":
        raise SourceError(f"{path}: not JSON (starts with {kind!r}); {EXPECTED}")
    for line in iter_lines(path):
        if isinstance(line, LineProblem):
            raise SourceError(f"{path}:{line.number}: {line.message}; {EXPECTED}")
        try:
            return orjson.loads(line.data)
        except orjson.JSONDecodeError as error:
            raise SourceError(f"{path}:{line.number}: invalid JSON: {error}; {EXPECTED}") from None
    return None


def _origin(path: Path, raw: RawRecord) -> str:
    where = f"{path.name}:{raw.line}"
    if isinstance(raw.value, dict) and "id" in raw.value:
        return f"{where} (id {raw.value['id']})"
    return where


# --- one record ------------------------------------------------------------------------------


def plan_record(record: Any, folder: Path, origin: str) -> PlannedRecord:
    """Turns and meta of one LLaVA record; raises :class:`SkipItem` with the reason."""
    if not isinstance(record, dict):
        raise SkipItem(f"a record must be a JSON object, got {type_name(record)}")
    if "video" in record:
        raise SkipItem("video records are not supported; extract frames and list them as images")
    if "conversations" not in record:
        raise SkipItem("no 'conversations' list")
    system, pairs = _dialogue(record["conversations"])
    images = _image_paths(record.get("image"))
    users = _renumber([user for user, _ in pairs], len(images))
    turns = []
    for (user, image_indices), (_, assistant) in zip(users, pairs, strict=True):
        located = tuple(local_image(images[index], folder) for index in image_indices)
        turns.append(PlannedTurn(user, assistant, located))
    meta: dict[str, Any] = {"id": record["id"]} if "id" in record else {}
    meta["origin"] = origin
    if system:
        meta["system"] = "\n".join(system)
    return PlannedRecord(tuple(turns), meta)


def _dialogue(conversations: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """(system texts, [(human text, gpt text), ...]) after checking order and types."""
    if not isinstance(conversations, list) or not conversations:
        raise SkipItem("'conversations' must be a non-empty list")
    system: list[str] = []
    texts: list[str] = []
    for index, message in enumerate(conversations):
        where = f"conversations[{index}]"
        if not isinstance(message, dict):
            raise SkipItem(f"{where} must be an object, got {type_name(message)}")
        speaker = message.get("from")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise SkipItem(f"{where}.from is {speaker!r}; expected human or gpt (or system)")
        value = message.get("value")
        if not isinstance(value, str):
            raise SkipItem(f"{where}.value must be a string, got {type_name(value)}")
        if role == "system":
            if texts:
                raise SkipItem(f"{where}: a system message after the conversation started")
            system.append(value)
            continue
        expected = "user" if len(texts) % 2 == 0 else "assistant"
        if role != expected:
            raise SkipItem(f"{where}: {_order_problem(role, bool(texts))}")
        texts.append(value)
    if not texts:
        raise SkipItem("no human message")
    if len(texts) % 2:
        raise SkipItem("the last human message has no gpt answer")
    return system, list(zip(texts[::2], texts[1::2], strict=True))


def _order_problem(role: str, started: bool) -> str:
    if role == "user":
        return "two human messages in a row"
    return "two gpt messages in a row" if started else "gpt message before any human message"


def _image_paths(value: Any) -> list[str]:
    """``image`` as a list: LLaVA writes one image as a bare string."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise SkipItem(f"'image' must be a path or a list of paths, got {type_name(value)}")
    return paths


def _renumber(users: list[str], num_images: int) -> list[tuple[str, list[int]]]:
    """Each human text with ``<image>`` -> ``<|image_k|>`` (k from 1 per turn) and the indices
    of the images that turn shows."""
    if any("<video>" in text for text in users):
        raise SkipItem("<video> tag: video records are not supported")
    counts = [len(IMAGE_TAG.findall(text)) for text in users]
    if sum(counts) == 0:
        everything = list(range(num_images))
        return [(text, everything if turn == 0 else []) for turn, text in enumerate(users)]
    if sum(counts) != num_images:
        raise SkipItem(f"{sum(counts)} <image> tag(s) but {num_images} image(s)")
    result = []
    first = 0
    for text, count in zip(users, counts, strict=True):
        result.append((_number_tags(text), list(range(first, first + count))))
        first += count
    return result


def _number_tags(text: str) -> str:
    """``<image>`` -> ``<|image_1|>``, ``<|image_2|>``, ... in order of appearance."""
    numbers = iter(range(1, text.count("<image>") + 1))
    return IMAGE_TAG.sub(lambda _: f"<|image_{next(numbers)}|>", text)
