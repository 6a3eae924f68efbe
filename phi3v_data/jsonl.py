"""Line-numbered JSONL reading and atomic JSONL writing.

Real files are messy: a UTF-8 BOM, CRLF line ends, blank lines, a stray NUL block from a
crashed copy, a multi-gigabyte line without a newline. The reader streams the file in
blocks, tolerates the first three, and turns the others into per-line problems instead
of exceptions or unbounded memory use. Schema checks happen in the caller (``validate``)
or in :func:`read_jsonl`, which stops at the first bad line with its number.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel, ValidationError

from phi3v_data.errors import describe_validation_error
from phi3v_data.schema import Sample

BOM = b"\xef\xbb\xbf"
BLOCK_SIZE = 1 << 20
MAX_LINE_BYTES = 32 << 20  # a sample line is a few KB; anything this long is not data


@dataclass(slots=True)
class Line:
    """One non-blank line: its 1-based number and its bytes (no BOM, CR or LF)."""

    number: int
    data: bytes


@dataclass(slots=True)
class LineProblem:
    """A line that cannot even be handed to a JSON parser, and why."""

    number: int
    message: str


class JsonlError(ValueError):
    """A bad line in a JSONL file; ``str()`` names the file and line."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


def iter_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Line | LineProblem]:
    """Yield every non-blank line of a file, or a :class:`LineProblem` for unreadable ones.

    Memory stays bounded by ``max_line_bytes``: a longer line is skipped to its end and
    reported, not accumulated.
    """
    for block in iter_line_blocks(path, max_line_bytes=max_line_bytes):
        yield from block


def iter_line_blocks(
    path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[list[Line | LineProblem]]:
    """The lines of :func:`iter_lines`, a read block (about 1 MiB) at a time.

    Hot loops (``validate`` at 100k+ lines/s) iterate a list per block instead of resuming
    a generator per line.
    """
    with open(path, "rb") as file:
        yield from _split_blocks(file, max_line_bytes)


def _split_blocks(file: IO[bytes], max_line_bytes: int) -> Iterator[list[Line | LineProblem]]:
    number = 0
    pending = b""
    skipping = False  # inside an over-long line, dropping bytes until its newline
    first = True
    while block := file.read(BLOCK_SIZE):
        if first:
            block = block.removeprefix(BOM)
            first = False
        pieces = block.split(b"\n")
        complete = pieces[:-1]
        out: list[Line | LineProblem] = []
        if complete:
            # The first piece continues a line from the previous block (or ends a skip).
            head, rest = complete[0], complete[1:]
            number += 1
            if skipping:
                skipping = False
                out.append(_too_long(number, max_line_bytes))
            else:
                item = _classify(number, pending + head, max_line_bytes)
                if item is not None:
                    out.append(item)
            pending = b""
            start = number + 1
            number += len(rest)
            # One scan of the block decides whether its lines need the careful path.
            if b"\x00" not in block and b"\r" not in block:
                out.extend(
                    Line(n, piece)
                    for n, piece in enumerate(rest, start)
                    if piece and len(piece) <= max_line_bytes and not piece.isspace()
                )
                too_long = [
                    _too_long(n, max_line_bytes)
                    for n, piece in enumerate(rest, start)
                    if len(piece) > max_line_bytes
                ]
                if too_long:
                    out = sorted(out + too_long, key=lambda item: item.number)
            else:
                for n, piece in enumerate(rest, start):
                    item = _classify(n, piece, max_line_bytes)
                    if item is not None:
                        out.append(item)
        if out:
            yield out
        tail = pieces[-1]
        if skipping:
            continue
        pending = pending + tail if pending else tail
        if len(pending) > max_line_bytes:
            pending = b""
            skipping = True
    if skipping:
        yield [_too_long(number + 1, max_line_bytes)]
    elif pending:
        item = _classify(number + 1, pending, max_line_bytes)
        if item is not None:
            yield [item]


def _too_long(number: int, max_line_bytes: int) -> LineProblem:
    return LineProblem(number, f"line is longer than {max_line_bytes:,} bytes; not read")


def _classify(number: int, data: bytes, max_line_bytes: int) -> Line | LineProblem | None:
    if data.endswith(b"\r"):
        data = data[:-1]
    if len(data) > max_line_bytes:
        return _too_long(number, max_line_bytes)
    if b"\x00" in data:
        return LineProblem(number, "line contains NUL bytes: binary data, not JSON text")
    if not data.strip():
        return None
    return Line(number, data)


def read_jsonl(
    path: str | os.PathLike[str], *, validate: bool = True, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Any]:
    """Stream the lines of a JSONL file as :class:`Sample` objects (or plain dicts).

    With ``validate=False`` each line is only parsed as JSON. The first bad line raises
    :class:`JsonlError` with its file, line number and the reason; lines before it have
    already been yielded.
    """
    for item in iter_lines(path, max_line_bytes=max_line_bytes):
        if isinstance(item, LineProblem):
            raise JsonlError(path, item.number, item.message)
        if validate:
            try:
                yield Sample.model_validate_json(item.data)
            except ValidationError as error:
                _, field, message = describe_validation_error(error)[0]
                where = f"{field}: " if field else ""
                raise JsonlError(path, item.number, f"{where}{message}") from None
        else:
            try:
                yield orjson.loads(item.data)
            except orjson.JSONDecodeError as error:
                raise JsonlError(path, item.number, f"invalid JSON: {error}") from None


def dumps_record(record: BaseModel | Mapping[str, Any]) -> bytes:
    """One JSONL line (without newline). ``meta: null`` is left out to keep lines short."""
    if isinstance(record, BaseModel):
        data = record.model_dump(mode="json")
        if data.get("meta", 0) is None:
            del data["meta"]
        return orjson.dumps(data)
    return orjson.dumps(record)


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    If the block raises (or the process dies) the old ``path`` is untouched and only the
    temporary file, named ``.<name>.*.tmp``, can be left behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_jsonl(
    path: str | os.PathLike[str], records: Iterable[BaseModel | Mapping[str, Any]]
) -> int:
    """Write records (Samples or dicts) as JSONL atomically; return how many were written."""
    count = 0
    with atomic_writer(path) as file:
        for record in records:
            file.write(dumps_record(record))
            file.write(b"\n")
            count += 1
    return count
