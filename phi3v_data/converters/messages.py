"""``messages``: OpenAI-style chat JSONL, ``{"messages": [{"role", "content"}, ...]}``.

``content`` is a string or a list of parts: ``{"type": "text", "text"}``,
``{"type": "image_url", "image_url": {"url"}}`` (or ``"image_url": "..."``) and
``{"type": "image", "image" | "url" | "path"}``. ``--src`` is a JSONL file or a folder of
``.jsonl`` files. An image reference may be:

- a local path, relative to ``--image-folder`` (default: the folder of the JSONL file);
- a ``file://`` URL;
- a ``data:image/...;base64,`` URI, decoded in the worker and stored under
  ``images/data/<sha256>``, so the same picture embedded twice is stored once.

``http(s)`` URLs are skips with a reason: conversion never touches the network.

Images stay where they appear. If every image part of a user message comes before its text,
the text is left tag-free and the trainer puts ``<|image_1|>..<|image_n|>`` in front, which is
exactly what the message said. Otherwise each image part becomes ``<|image_k|>`` at its place
(numbered from 1 in each turn, as the phi3v contract lists a turn's images in that turn):
adjacent images are written next to each other and a newline separates them from text, as
the trainer does. Text parts are joined with newlines.

Roles are ``system`` (or ``developer``), ``user`` and ``assistant``; user and assistant must
alternate, starting with a user message and ending with an answer. Leading system messages
go into ``meta.system`` (Phi-3.5-V's prompt format has no system role); ``meta`` also keeps
the original ``id`` and ``origin`` (``file:line``). Anything else (an image in an answer, a
tool message, an unknown part type) skips the record with ``file:line (id ...)`` and the
reason. The split is ``--split``, else the file name's last ``_``/``-`` part when it is a
split name (``chat_val.jsonl`` -> ``val``), else ``train``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
from phi3v_data.jsonl import Line, LineProblem, iter_lines
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)

EXPECTED = (
    'expected a JSONL file of {"messages": [{"role": "user", "content": ...}, ...]} '
    "records (OpenAI chat format), or a folder of .jsonl files"
)


class MessagesOptions(RecordFileOptions):
    name: str = Field(
        "messages", pattern=SAFE_NAME, description="Output file prefix: <name>_<split>.jsonl."
    )


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image to store: a local file (``source``) or a base64 data URI (``data``)."""

    source: str = ""
    stem: str = ""
    data: str = ""


@dataclass(frozen=True, slots=True)
class PlannedTurn:
    """One turn, ready to build: user text with ``<|image_N|>`` tags, images to store."""

    user: str
    assistant: str
    images: tuple[ImageRef, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedRecord:
    """What a worker needs for one record: small and picklable, no pixels."""

    turns: tuple[PlannedTurn, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@register
class Messages(RecordFileConverter):
    name = "messages"
    summary = "OpenAI-style chat JSONL: {messages: [{role, content: str | [text/image parts]}]}"
    Options = MessagesOptions
    options: MessagesOptions

    suffixes = (".jsonl",)
    expected = EXPECTED

    def check_first_record(self, path: Path) -> None:
        _check_first_record(path)

    def plan(self) -> Iterator[Item | Skip]:
        for path in self.files():
            split, folder = self.split_and_folder(path)
            for line in iter_lines(path):
                origin = f"{path.name}:{line.number}"
                try:
                    record = _load(line)
                    origin = _with_id(origin, record)
                    planned = plan_record(record, folder, f"{path.name}:{line.number}")
                except SkipItem as reason:
                    yield Skip(split, origin, str(reason))
                    continue
                yield Item(split, origin, planned)

    def build(self, item: Item, media: MediaWriter) -> Built:
        planned: PlannedRecord = item.payload
        turns = [
            Turn(
                images=[_store(image, media, item.origin) for image in turn.images],
                user=turn.user,
                assistant=turn.assistant,
            )
            for turn in planned.turns
        ]
        return Built(turns, dict(planned.meta))


def _store(image: ImageRef, media: MediaWriter, origin: str) -> str:
    """Copy a local image, or decode a data URI and store its bytes under their hash."""
    if not image.data:
        return media.copy_image(image.source, image.stem)
    encoded = "".join(image.data.partition(",")[2].split())
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SkipItem("data URI is not valid base64") from None
    stem = f"data/{hashlib.sha256(data).hexdigest()[:32]}"
    return media.write_image_bytes(data, stem, origin=f"{origin} data URI")


# --- reading ---------------------------------------------------------------------------------


def _load(line: Line | LineProblem) -> Any:
    if isinstance(line, LineProblem):
        raise SkipItem(line.message)
    try:
        return orjson.loads(line.data)
    except orjson.JSONDecodeError as error:
        raise SkipItem(f"invalid JSON: {error}") from None


def _with_id(origin: str, record: Any) -> str:
    if isinstance(record, dict) and "id" in record:
        return f"{origin} (id {record['id']})"
    return origin


def _check_first_record(path: Path) -> None:
    """Refuse, before any output exists, a file that is not chat JSONL at all."""
    for line in iter_lines(path):
        try:
            first = _load(line)
        except SkipItem as reason:
            raise SourceError(f"{path}:{line.number}: {reason}; {EXPECTED}") from None
        if isinstance(first, dict) and "messages" in first:
            return
        hint = ""
        if isinstance(first, dict) and "conversations" in first:
            hint = " (LLaVA format? use 'phi3v-data convert llava')"
        raise SourceError(f"{path}:{line.number}: not a messages record{hint}; {EXPECTED}")


# --- one record ------------------------------------------------------------------------------


def plan_record(record: Any, folder: Path, origin: str) -> PlannedRecord:
    """Turns and meta of one chat record; raises :class:`SkipItem` with the reason."""
    if not isinstance(record, dict):
        raise SkipItem(f"a record must be a JSON object, got {type_name(record)}")
    for key in ("images", "image"):
        if record.get(key):
            raise SkipItem(
                f"top-level {key!r} is not read: put each image in the user message content "
                'as {"type": "image_url", "image_url": {"url": ...}}'
            )
    system, exchanges = _dialogue(record.get("messages"))
    turns = []
    for where, user_parts, answer in exchanges:
        text, images = _user_text(user_parts)
        refs = tuple(_image_ref(url, folder, where) for url in images)
        turns.append(PlannedTurn(text, answer, refs))
    meta: dict[str, Any] = {"id": record["id"]} if "id" in record else {}
    meta["origin"] = origin
    if system:
        meta["system"] = "\n".join(system)
    return PlannedRecord(tuple(turns), meta)


Part = tuple[str, str]  # ("text", text) or ("image", url)


def _dialogue(messages: Any) -> tuple[list[str], list[tuple[str, list[Part], str]]]:
    """(system texts, [(where, user parts, assistant text), ...]) after checking order and
    types; ``where`` names the user message for skip reasons."""
    if not isinstance(messages, list) or not messages:
        raise SkipItem("'messages' must be a non-empty list")
    system: list[str] = []
    users: list[tuple[str, list[Part]]] = []
    answers: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise SkipItem(f"{where} must be an object, got {type_name(message)}")
        role = ROLES.get(message["role"]) if isinstance(message.get("role"), str) else None
        if role is None:
            raise SkipItem(f"{where}.role is {message.get('role')!r}; expected user or assistant")
        parts = _parts(message.get("content"), where)
        if role == "system":
            if users:
                raise SkipItem(f"{where}: a system message after the conversation started")
            system.append(_text_only(parts, where, role))
        elif role == "user":
            if len(users) > len(answers):
                raise SkipItem(f"{where}: two user messages in a row")
            users.append((where, parts))
        else:
            if len(users) == len(answers):
                what = "two assistant messages in a row" if users else "assistant message first"
                raise SkipItem(f"{where}: {what}")
            answers.append(_text_only(parts, where, role))
    if not users:
        raise SkipItem("no user message")
    if len(users) > len(answers):
        raise SkipItem("the last user message has no assistant answer")
    return system, [(w, p, a) for (w, p), a in zip(users, answers, strict=True)]


def _parts(content: Any, where: str) -> list[Part]:
    """A message's content as ("text", ...) and ("image", url) parts, in order."""
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise SkipItem(
            f"{where}.content must be a string or a list of parts, got {type_name(content)}"
        )
    return [_part(part, f"{where}.content[{index}]") for index, part in enumerate(content)]


def _part(part: Any, where: str) -> Part:
    if not isinstance(part, dict):
        raise SkipItem(f"{where} must be an object, got {type_name(part)}")
    kind = part.get("type")
    if kind == "text":
        value = part.get("text")
    elif kind == "image_url":
        value = part.get("image_url")
        value = value.get("url") if isinstance(value, dict) else value
    elif kind == "image":
        value = next((part[k] for k in ("image", "url", "path") if k in part), None)
    else:
        raise SkipItem(f"{where}: unsupported part type {kind!r} (expected text, image_url, image)")
    if not isinstance(value, str):
        raise SkipItem(f"{where}: the {kind} must be a string, got {type_name(value)}")
    return ("text" if kind == "text" else "image", value)


def _text_only(parts: list[Part], where: str, role: str) -> str:
    if any(kind == "image" for kind, _ in parts):
        raise SkipItem(f"{where}: an image in the {role} message; only user messages carry images")
    return "\n".join(text for _, text in parts)


def _user_text(parts: list[Part]) -> tuple[str, list[str]]:
    """The user text with ``<|image_k|>`` tags where images sit, and the image urls in order.

    Images that all come before the text need no tags: the trainer prepends them.
    """
    images = [value for kind, value in parts if kind == "image"]
    first_text = next((i for i, (kind, _) in enumerate(parts) if kind == "text"), len(parts))
    if all(kind == "text" for kind, _ in parts[first_text:]):
        return "\n".join(value for _, value in parts[first_text:]), images
    text = ""
    previous = None
    number = 0
    for kind, value in parts:
        if kind == "image":
            number += 1
            value = f"<|image_{number}|>"
        separator = "" if previous is None or previous == kind == "image" else "\n"
        text += separator + value
        previous = kind
    return text, images


def _image_ref(url: str, folder: Path, where: str) -> ImageRef:
    """Where an image comes from; remote and unknown URLs are skips (no network)."""
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        raise SkipItem(
            f"{where}: remote image URL {url!r} is not downloaded (conversion never uses the "
            "network); download it and give a local path"
        )
    if lowered.startswith("data:"):
        if not DATA_URI.match(url):
            raise SkipItem(f"{where}: only base64 data:image/...;base64, URIs are supported")
        return ImageRef(data=url)
    if lowered.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise SkipItem(f"{where}: file URL {url!r} names another host")
        return _local(unquote(parts.path), folder)
    if URL_SCHEME.match(url):
        raise SkipItem(f"{where}: unsupported image URL {url!r}")
    if not url:
        raise SkipItem(f"{where}: empty image path")
    return _local(url, folder)


def _local(path: str, folder: Path) -> ImageRef:
    """A local image file and its destination stem below images/."""
    source, stem = local_image(path, folder)
    return ImageRef(source=source, stem=stem)
