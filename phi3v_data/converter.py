"""What a converter is: it knows one raw format; the engine knows the work.

A converter lists its raw items cheaply in the main process (:meth:`Converter.plan`) and
turns one item into turns and meta in a worker (:meth:`Converter.build`), writing images
through the :class:`~phi3v_data.media.MediaWriter` it is handed. Everything else —
parallelism, ids, resume, atomic output, the skip report, the manifest — is the
engine's. A new dataset is one small module that subclasses :class:`Converter` and is
decorated with :func:`phi3v_data.registry.register`.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from phi3v_data.media import MediaWriter
from phi3v_data.schema import Turn

# Names that become part of output file names (``--name``, ``--split``): no separators, no
# leading dot, nothing a shell or another OS would trip over.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


SPLIT_NAMES = ("train", "val", "validation", "dev", "test")


class ConverterOptions(BaseModel):
    """A converter's own options; each field becomes a ``--flag`` of ``phi3v-data convert``.

    Field descriptions are the help texts. Options are part of the output's identity:
    resuming with different values is refused.
    """

    model_config = ConfigDict(extra="forbid")


class SourceError(ValueError):
    """``--src`` is not a layout this converter reads; the message says what was expected."""


class SkipItem(Exception):
    """Raised by :meth:`Converter.build` to skip one raw item with a reason."""


@dataclass(frozen=True, slots=True)
class Item:
    """One raw item to convert: its split, where it came from, and what a worker needs.

    ``origin`` names the raw item for people (a file, ``file:line``, or an id) and goes into
    the skip report; ``payload`` must be small and picklable (paths and ids, not pixels).
    """

    split: str
    origin: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Skip:
    """A raw item the plan already knows is unusable (a malformed record, say)."""

    split: str
    origin: str
    reason: str


@dataclass(slots=True)
class Built:
    """What :meth:`Converter.build` returns for one item."""

    conversations: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)


class Converter(ABC):
    """Base class of every converter. Subclasses set ``name``, ``summary`` and ``Options``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[ConverterOptions]] = ConverterOptions
    requires_src: ClassVar[bool] = True

    def __init__(self, src: Path | None, options: ConverterOptions) -> None:
        self.src = src
        self.options = options

    @property
    def dataset_name(self) -> str:
        """Prefix of the output files, ``<dataset_name>_<split>.jsonl``."""
        return self.name

    def prepare(self) -> None:
        """Check (or fetch) the source in the main process before planning.

        Raise :class:`SourceError` naming the expected layout when ``src`` is not one.
        """
        if self.src is None and self.requires_src:
            raise SourceError(f"{self.name} needs --src")
        if self.src is not None and not self.src.exists():
            raise SourceError(f"--src {self.src} does not exist")

    @abstractmethod
    def plan(self) -> Iterable[Item | Skip]:
        """Every raw item in a deterministic order (resume relies on it)."""

    @abstractmethod
    def build(self, item: Item, media: MediaWriter) -> Built:
        """Convert one item; raise :class:`SkipItem` (or let an ImageProblem/VideoError or
        OSError escape) to skip it with a reason."""


# --- helpers for converters that read users' own files --------------------------------------


def input_files(src: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``src`` itself if it is a file, else the files directly in the folder ``src`` whose
    suffix is one of ``suffixes``, sorted (so plans are deterministic)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        return []
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def split_from_name(path: Path, default: str = "train") -> str:
    """``mine_val.jsonl`` -> ``val``: the last ``_``/``-``/``.`` part of the file's stem when
    it names a split, else ``default``."""
    last = re.split(r"[_\-.]", path.stem)[-1].lower()
    return last if last in SPLIT_NAMES else default


def local_image(path: str, folder: Path) -> tuple[str, str]:
    """(file to copy, destination stem below ``images/``) for an image path of a record.

    Paths inside ``folder`` keep their relative path, so the output is recognisable and an
    image shared by many records is stored once; others (absolute, or leaving through
    ``..``) go under ``external/`` with their absolute path.
    """
    source = os.path.normpath(os.path.join(folder, path))
    relative = os.path.relpath(source, folder)
    if relative == ".":
        raise SkipItem(f"image path {path!r} names the image folder, not a file")
    if relative == ".." or relative.startswith("../"):
        relative = "external/" + source.lstrip("/")
    return source, str(PurePosixPath(relative).with_suffix(""))


class RecordFileOptions(ConverterOptions):
    """Options shared by converters of users' record files (LLaVA, OpenAI messages)."""

    split: str | None = Field(
        None,
        pattern=SAFE_NAME,
        description="Split of every record (default: from the file name, <name>_<split>.jsonl, "
        "else train).",
    )
    image_folder: Path | None = Field(
        None,
        description="Folder relative image paths are resolved against (default: each file's "
        "folder).",
    )


class RecordFileConverter(Converter):
    """Base of converters that read users' record files: a file, or a folder of them.

    Subclasses set ``suffixes`` and ``expected`` (the layout named in errors) and implement
    :meth:`check_first_record`, which refuses a file of another format before any work.
    """

    suffixes: ClassVar[tuple[str, ...]]
    expected: ClassVar[str]
    options: Any  # a RecordFileOptions subclass with a ``name`` field

    @property
    def dataset_name(self) -> str:
        return self.options.name

    def prepare(self) -> None:
        super().prepare()
        folder = self.options.image_folder
        if folder is not None and not folder.is_dir():
            raise SourceError(f"--image-folder {folder} is not a folder")
        files = self.files()
        if not files:
            kinds = " or ".join(self.suffixes)
            raise SourceError(f"--src {self.src}: no {kinds} file; {self.expected}")
        for path in files:
            self.check_first_record(path)

    def files(self) -> list[Path]:
        assert self.src is not None
        return input_files(self.src, self.suffixes)

    def split_and_folder(self, path: Path) -> tuple[str, Path]:
        """The split of a file's records and the folder its image paths are relative to."""
        split = self.options.split or split_from_name(path)
        return split, Path(os.path.abspath(self.options.image_folder or path.parent))

    @abstractmethod
    def check_first_record(self, path: Path) -> None:
        """Raise :class:`SourceError` when ``path`` is not in this converter's format."""
