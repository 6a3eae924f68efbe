"""``hf``: any table of image + question + answer columns, named on the command line.

``--src`` is a ``.parquet`` file or a folder of them (searched recursively, as in a Hub
repository's ``data/``), a folder written by ``datasets``' ``save_to_disk`` (Arrow files read
directly with pyarrow, so ``datasets`` is not needed), or a Hub id such as ``owner/name``, which
needs the ``datasets`` package and is loaded with ``datasets.load_dataset``.

Columns: ``--image-col`` holds an Image struct ``{bytes, path}``, raw image bytes, a path
relative to ``--src`` (its folder when ``--src`` is a file), or a list of these (several images
in one turn); ``--question-col`` fills ``{question}`` in ``--prompt``; ``--answer-col`` holds a
string, or a list whose first item is the answer and all of which go to ``meta.answers``;
``--id-col`` is copied into ``meta``. A dotted name (``query.en``) reads a field of a struct
column. An empty ``--question-col`` or ``--answer-col`` means there is none: rows without an
answer are written with an empty answer and ``meta.labeled: false``, as evaluation data.

The split comes from the file name (``train-00000-of-00001.parquet`` -> ``train``,
``validation`` -> ``val``), else from the parent folder, else it is ``train``; ``--split``
overrides it for every file. Embedded bytes are stored under a hash of their content, so an
image used by many rows is written once; path images keep their path below ``--src``. Rows are
read one row group at a time, never a whole file, so a 10 GB parquet file converts in the memory
of one row group per worker.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from phi3v_data.converter import (
    SAFE_NAME,
    Built,
    Converter,
    ConverterOptions,
    Item,
    SkipItem,
    SourceError,
)
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import SAFE_IMAGE_PATH_PATTERN, Turn

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EXPECTED_LAYOUTS = (
    "expected a .parquet file, a folder of .parquet files, a folder written by datasets' "
    "save_to_disk (state.json or dataset_dict.json with .arrow files), or a Hugging Face Hub "
    "id such as owner/name (needs the datasets package)"
)
JSON_SCALARS = (str, int, float, bool, type(None))


class HfOptions(ConverterOptions):
    image_col: str = Field(
        "image",
        description="Image column: an Image struct {bytes, path}, bytes, a path relative to "
        "--src, or a list of these.",
    )
    question_col: str = Field(
        "question", description="Question column ('' for none); dots read struct fields."
    )
    answer_col: str = Field(
        "answer", description="Answer column, a string or a list (first = answer; '' for none)."
    )
    split: str | None = Field(
        None, pattern=SAFE_NAME, description="Split of every file (default: from file names)."
    )
    id_col: str | None = Field(None, description="Column copied into meta as the row's id.")
    prompt: str = Field(
        "{question}",
        description="User text template: {question} is filled in, a typed \\n is a newline.",
    )
    name: str = Field("hf", pattern=SAFE_NAME, description="Output prefix: <name>_<split>.jsonl.")

    @field_validator("prompt")
    @classmethod
    def _prompt_fills(cls, prompt: str) -> str:
        prompt = prompt.replace("\\n", "\n")  # '\n' typed on a command line
        try:
            prompt.format(question="")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"the template may use only {{question}} ({error!r})") from None
        return prompt


@dataclass(frozen=True, slots=True)
class Table:
    """One input file: a parquet file, or an Arrow stream file written by ``datasets``."""

    split: str
    path: str
    label: str  # how people name it: the path below --src
    arrow: bool = False


@register
class HuggingFace(Converter):
    name = "hf"
    summary = "any parquet / datasets table: --image-col, --question-col, --answer-col"
    Options = HfOptions
    options: HfOptions

    @property
    def dataset_name(self) -> str:
        return self.options.name

    def prepare(self) -> None:
        assert self.src is not None
        if not self.src.exists() and HUB_ID.match(self.src.as_posix()):
            self.tables = _hub_tables(self.src.as_posix(), self.options.split)
        else:
            super().prepare()
            self.tables = _local_tables(self.src, self.options.split)
        columns = [self.options.image_col, self.options.question_col, self.options.answer_col]
        self.columns = [c for c in [*columns, self.options.id_col] if c]
        for table in self.tables:
            _check_columns(table, _read_schema(table), self.columns)
        self.base_dir = self.src if self.src.is_dir() else self.src.parent
        self._row_groups = RowGroupCache([c.split(".")[0] for c in self.columns])

    def plan(self) -> Iterator[Item]:
        for table in self.tables:
            position = 0
            for group, rows in enumerate(_row_group_sizes(table)):
                for row in range(rows):
                    yield Item(table.split, f"{table.label} row {position}", (table, group, row))
                    position += 1

    def build(self, item: Item, media: MediaWriter) -> Built:
        table, group, row = item.payload
        values = self._row_groups.row(table, group, row)
        options = self.options
        row_id = _json_value(_field(values, options.id_col)) if options.id_col else None
        origin = f"{options.id_col} {row_id}" if options.id_col else f"column {options.image_col}"
        images = self._store_images(_field(values, options.image_col), media, origin)
        question = _text(values, options.question_col) if options.question_col else ""
        answers = _answers(_field(values, options.answer_col)) if options.answer_col else []
        meta: dict[str, Any] = {"answers": answers, "labeled": bool(answers)}
        if options.id_col:
            meta[options.id_col] = row_id
        turn = Turn(
            images=images,
            user=options.prompt.format(question=question),
            assistant=answers[0] if answers else "",
        )
        return Built([turn], meta)

    def _store_images(self, value: Any, media: MediaWriter, origin: str) -> list[str]:
        values = value if isinstance(value, list) else [value]
        if not values or any(v is None for v in values):
            raise SkipItem(f"no image in column {self.options.image_col!r}")
        return [self._store_image(v, media, origin) for v in values]

    def _store_image(self, value: Any, media: MediaWriter, origin: str) -> str:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            value = data if data else path
        if isinstance(value, bytes) and value:
            digest = hashlib.sha1(value).hexdigest()[:20]
            return media.write_image_bytes(value, self._stem(digest), origin=origin)
        if isinstance(value, str) and value:
            return self._copy_path(value, media)
        raise SkipItem(f"column {self.options.image_col!r} holds no image bytes or path")

    def _copy_path(self, value: str, media: MediaWriter) -> str:
        source = (self.base_dir / value).resolve()
        if not source.is_file():
            raise SkipItem(f"image file not found: {value}")
        try:
            relative = source.relative_to(self.base_dir.resolve()).with_suffix("").as_posix()
        except ValueError:
            relative = ""
        if not re.fullmatch(SAFE_IMAGE_PATH_PATTERN, relative):
            relative = hashlib.sha1(str(source).encode()).hexdigest()[:20]
        return media.copy_image(source, f"{self.options.name}/{relative}")

    def _stem(self, digest: str) -> str:
        return f"{self.options.name}/{digest[:2]}/{digest}"


# --- finding the tables -----------------------------------------------------------------------


def _local_tables(src: Path, split: str | None) -> list[Table]:
    if src.is_file() and src.suffix == ".parquet":
        return [Table(split or _split_from_path(src), str(src), src.name)]
    if src.is_dir() and (src / "dataset_dict.json").is_file():
        return _saved_dict_tables(src, split)
    if src.is_dir() and (src / "state.json").is_file():
        return _saved_tables(src, src, split or _saved_split(src))
    parquet = sorted(src.rglob("*.parquet")) if src.is_dir() else []
    if not parquet:
        raise SourceError(f"--src {src} is not a table this converter reads; {EXPECTED_LAYOUTS}")
    tables = [
        Table(split or _split_from_path(p), str(p), p.relative_to(src).as_posix()) for p in parquet
    ]
    rank = {name: n for n, name in enumerate(SPLIT_ORDER)}
    return sorted(tables, key=lambda t: (rank.get(t.split, len(rank)), t.label))


def _split_from_path(path: Path) -> str:
    """``validation-00000-of-00003.parquet`` -> ``val``; ``data/test/0000.parquet`` -> ``test``;
    a shard of another split keeps its name; anything else is ``train``."""
    stem = SHARD_SUFFIX.sub("", path.stem)
    for name in (stem, path.parent.name):
        if name.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[name.lower()]
    if SHARD_SUFFIX.search(path.stem) and re.match(SAFE_NAME, stem):
        return stem
    return "train"


def _saved_dict_tables(root: Path, split: str | None) -> list[Table]:
    """A ``DatasetDict.save_to_disk`` folder: ``dataset_dict.json`` names the split folders."""
    try:
        names = json.loads((root / "dataset_dict.json").read_text())["splits"]
    except (ValueError, KeyError, TypeError) as error:
        raise SourceError(f"{root / 'dataset_dict.json'} is not readable: {error}") from None
    tables = []
    for name in names:
        tables += _saved_tables(root, root / name, split or _split_name(name))
    return tables


def _saved_tables(root: Path, folder: Path, split: str) -> list[Table]:
    """A ``Dataset.save_to_disk`` folder: ``state.json`` lists its Arrow files in order."""
    try:
        files = json.loads((folder / "state.json").read_text())["_data_files"]
        paths = [folder / entry["filename"] for entry in files]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SourceError(
            f"{folder / 'state.json'} is not a datasets state file: {error}"
        ) from None
    return [Table(split, str(p), p.relative_to(root).as_posix(), arrow=True) for p in paths]


def _saved_split(folder: Path) -> str:
    try:
        name = json.loads((folder / "state.json").read_text()).get("_split")
    except (OSError, ValueError, AttributeError):
        name = None
    return _split_name(name) if isinstance(name, str) and name else "train"


def _split_name(name: str) -> str:
    """A split named by the data itself, as an output file name part (``validation`` -> ``val``)."""
    if not re.match(SAFE_NAME, name):
        raise SourceError(f"split name {name!r} cannot name an output file; pass --split")
    return SPLIT_NAMES.get(name, name)


def _hub_tables(hub_id: str, split: str | None) -> list[Table]:
    """Load a Hub dataset with ``datasets`` and read the Arrow files it caches."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"--src {hub_id} is not a file or folder; reading it as a Hugging Face Hub id needs "
            "the datasets package (pip install datasets), or download its parquet files and "
            "pass their folder"
        ) from None
    try:
        loaded = datasets.load_dataset(hub_id)
    except Exception as error:  # offline, gated, needs a config name, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise SourceError(f"cannot load {hub_id} with datasets: {message}") from None
    parts = loaded.items() if isinstance(loaded, dict) else [(split or "train", loaded)]
    tables = [
        Table(
            split or _split_name(name),
            entry["filename"],
            f"{hub_id}:{name}/{Path(entry['filename']).name}",
            arrow=True,
        )
        for name, dataset in parts
        for entry in dataset.cache_files
    ]
    if not tables:
        raise SourceError(f"{hub_id} loaded without cache files; save it with save_to_disk")
    return tables


# --- reading ----------------------------------------------------------------------------------


def _read_schema(table: Table) -> pa.Schema:
    try:
        if table.arrow:
            with pa.memory_map(table.path) as source:
                return pa.ipc.open_stream(source).schema
        return pq.read_schema(table.path)
    except (OSError, pa.ArrowException) as error:
        raise SourceError(f"{table.label} is not a readable table: {error}") from None


def _check_columns(table: Table, schema: pa.Schema, columns: list[str]) -> None:
    """Every named (dotted) column exists, or one error that lists the columns there are."""
    for column in columns:
        node: Any = schema
        for part in column.split("."):
            index = (
                node.get_field_index(part) if isinstance(node, pa.Schema | pa.StructType) else -1
            )
            if index < 0:
                raise SourceError(
                    f"{table.label} has no column {column!r}; its columns are: "
                    f"{', '.join(_column_names(schema))}"
                )
            node = node.field(index).type


def _column_names(schema: pa.Schema) -> list[str]:
    """Top-level names and the dotted names of struct fields, as the options spell them."""
    names: list[str] = []

    def walk(prefix: str, fields: list[pa.Field]) -> None:
        for field in fields:
            names.append(prefix + field.name)
            if isinstance(field.type, pa.StructType) and not _is_image_struct(field.type):
                walk(f"{prefix}{field.name}.", list(field.type))

    walk("", list(schema))
    return names


def _is_image_struct(kind: pa.StructType) -> bool:
    return {field.name for field in kind} == {"bytes", "path"}


def _row_group_sizes(table: Table) -> list[int]:
    """Rows per row group (one group per Arrow file), from file metadata only."""
    if table.arrow:
        return [_open_arrow(table.path).num_rows]
    metadata = pq.ParquetFile(table.path).metadata
    return [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]


def _open_arrow(path: str) -> pa.Table:
    """The whole Arrow stream file, memory-mapped: no copy, pages load as rows are read."""
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def _field(values: dict[str, Any], column: str) -> Any:
    value: Any = values
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _text(values: dict[str, Any], column: str) -> str:
    value = _field(values, column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SkipItem(f"no text in column {column!r}")
    return value if isinstance(value, str) else str(value)


def _answers(value: Any) -> list[str]:
    """Every answer as a string: a list keeps its order, a scalar is one answer."""
    values = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else str(v) for v in values if v is not None]


def _json_value(value: Any) -> Any:
    if isinstance(value, JSON_SCALARS):
        return value
    return str(value)


class RowGroupCache:
    """The last row group this process read, with only the columns the options name.

    Items of one row group are planned one after another, so a worker reads each group about
    once and holds one group in memory, however large the file.
    """

    def __init__(self, columns: list[str]) -> None:
        self.columns = sorted(set(columns))
        self._key: tuple[str, int] | None = None
        self._table: pa.Table | None = None

    def row(self, table: Table, group: int, row: int) -> dict[str, Any]:
        if self._key != (table.path, group) or self._table is None:
            self._table = None  # let the previous row group go before reading the next
            if table.arrow:
                self._table = _open_arrow(table.path).select(self.columns)
            else:
                parquet = pq.ParquetFile(table.path)
                self._table = parquet.read_row_group(group, columns=self.columns)
            self._key = (table.path, group)
        return self._table.slice(row, 1).to_pylist()[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"columns": self.columns}  # a worker starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["columns"])
