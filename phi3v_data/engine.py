"""The conversion engine: runs any converter with workers, progress, resume and a report.

Work is journaled: every finished item (a sample or a skip) is appended to
``<out_dir>/.phi3v-work/journal.jsonl`` as one line, flushed at once. A run that is
killed (``kill -9`` included) and started again reads the journal, redoes nothing that is
in it, and carries on. When every item is done the engine writes each
``<name>_<split>.jsonl`` in plan order (ids follow plan order, so output is the same for
any number of workers), then ``skipped.jsonl``, then ``manifest.json`` last, each
atomically, and removes the journal.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from phi3v_data.converter import Converter, Item, SkipItem, SourceError
from phi3v_data.distribute import distributor_for
from phi3v_data.jsonl import atomic_writer, dumps_record
from phi3v_data.layout import IMAGES_DIR, MANIFEST, SKIPPED, jsonl_name
from phi3v_data.media import ImageProblem, MediaWriter
from phi3v_data.registry import get_converter
from phi3v_data.schema import Sample

WORK_DIR = ".phi3v-work"
JOURNAL = "journal.jsonl"
RUN_FILE = "run.json"
MAX_LISTED_REENCODED = 100


class ConvertError(ValueError):
    """The conversion cannot start (bad options, a foreign out_dir, an unreadable --src)."""


def _package_version() -> str:
    from phi3v_data import __version__

    return __version__


def convert(
    name: str,
    /,
    *,
    src: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str],
    workers: int | None = None,
    overwrite: bool = False,
    link: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Convert raw data with the converter ``name`` into ``out_dir``; return the manifest.

    ``options`` are the converter's own (see ``phi3v-data convert NAME --help``). Bad raw
    items are skipped and listed in ``skipped.jsonl``; the manifest counts them. Raises
    :class:`ConvertError` (or :class:`~phi3v_data.converter.SourceError`) before any
    output is touched when the conversion cannot start.
    """
    converter_class = get_converter(name)
    try:
        parsed = converter_class.Options(**options)
    except ValidationError as error:
        details = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise ConvertError(f"{name}: {details}") from None
    converter = converter_class(Path(src) if src is not None else None, parsed)
    converter.prepare()
    run = _Run(converter, Path(out_dir), link=link, workers=workers or os.cpu_count() or 1)
    return run.execute(overwrite=overwrite, progress=progress)


class _Run:
    def __init__(self, converter: Converter, out_dir: Path, *, link: bool, workers: int) -> None:
        self.converter = converter
        self.out_dir = out_dir
        self.work_dir = out_dir / WORK_DIR
        self.journal_path = self.work_dir / JOURNAL
        self.link = link
        self.workers = workers
        src = converter.src.resolve() if converter.src is not None else None
        self.identity = {
            "converter": converter.name,
            "src": str(src) if src else None,
            "options": converter.options.model_dump(mode="json"),
            "link": link,
        }

    # --- state of the out_dir -----------------------------------------------------------

    def _check_out_dir(self, overwrite: bool) -> dict[str, Any] | None:
        """The finished manifest if there is nothing to do; refuse foreign state."""
        manifest_path = self.out_dir / MANIFEST
        run_path = self.work_dir / RUN_FILE
        previous = orjson.loads(manifest_path.read_bytes()) if manifest_path.is_file() else None
        pending = orjson.loads(run_path.read_bytes()) if run_path.is_file() else None
        if overwrite:
            self._remove_outputs(previous)
            return None
        if previous is not None:
            if previous.get("identity") == self.identity:
                return previous
            raise ConvertError(_difference(self.out_dir, previous.get("identity"), self.identity))
        if pending is not None and pending != self.identity:
            raise ConvertError(_difference(self.out_dir, pending, self.identity))
        return None

    def _remove_outputs(self, previous: dict[str, Any] | None) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        (self.out_dir / MANIFEST).unlink(missing_ok=True)
        (self.out_dir / SKIPPED).unlink(missing_ok=True)
        for split in (previous or {}).get("splits", {}).values():
            (self.out_dir / split["file"]).unlink(missing_ok=True)

    # --- the run -------------------------------------------------------------------------

    def execute(self, *, overwrite: bool, progress: bool) -> dict[str, Any]:
        started = time.monotonic()
        finished = self._check_out_dir(overwrite)
        if finished is not None:
            return {**finished, "up_to_date": True}
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self.work_dir / RUN_FILE) as file:
            file.write(orjson.dumps(self.identity))
        done = _read_journal(self.journal_path)
        resumed = bool(done)
        splits: dict[int, str] = {}
        tasks: list[tuple[int, Item]] = []
        with open(self.journal_path, "ab") as journal:
            for index, entry in enumerate(self.converter.plan()):
                splits[index] = entry.split
                if index in done:
                    continue
                if isinstance(entry, Item):
                    tasks.append((index, entry))
                else:
                    record = {"i": index, "split": entry.split, "origin": entry.origin}
                    _append(journal, {**record, "skip": entry.reason})
            distribute = distributor_for(min(self.workers, max(1, len(tasks))), len(tasks))
            results = distribute(
                _build_in_worker,
                tasks,
                _setup_worker,
                (self.converter, self.out_dir / IMAGES_DIR, self.link),
            )
            bar = tqdm(
                total=len(tasks),
                disable=not progress,
                unit="item",
                desc=f"{self.converter.name} -> {self.out_dir}",
            )
            with bar:
                for line in results:
                    journal.write(line)
                    journal.flush()
                    bar.update()
        return self._finish(splits, started, resumed)

    def _finish(self, splits: dict[int, str], started: float, resumed: bool) -> dict[str, Any]:
        records = _read_journal(self.journal_path)
        missing = [i for i in splits if i not in records]
        if missing:  # cannot happen unless the journal was edited; never write partial output
            raise ConvertError(f"{len(missing)} items have no result; run the command again")
        by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
        skipped: list[dict[str, Any]] = []
        reencoded: list[list[str]] = []
        order: list[str] = []
        for index in sorted(records):
            record = records[index]
            split = record["split"]
            if split not in order:
                order.append(split)
            if "skip" in record:
                skipped.append(
                    {"split": split, "origin": record["origin"], "reason": record["skip"]}
                )
            else:
                by_split[split].append(record["sample"])
                reencoded.extend(record.get("reencoded", []))
        summary = {}
        for split in order:
            file_name = jsonl_name(self.converter.dataset_name, split)
            with atomic_writer(self.out_dir / file_name) as file:
                for sample in by_split[split]:
                    file.write(orjson.dumps(sample) + b"\n")
            summary[split] = {
                "file": file_name,
                "samples": len(by_split[split]),
                "skipped": sum(1 for s in skipped if s["split"] == split),
            }
        skipped_path = self.out_dir / SKIPPED
        if skipped:
            with atomic_writer(skipped_path) as file:
                for entry in skipped:
                    file.write(orjson.dumps(entry) + b"\n")
        else:
            skipped_path.unlink(missing_ok=True)
        manifest = {
            "converter": self.converter.name,
            "version": _package_version(),
            "identity": self.identity,
            "splits": summary,
            "samples": sum(s["samples"] for s in summary.values()),
            "skipped": len(skipped),
            "reencoded": {
                "count": len(reencoded),
                "files": reencoded[:MAX_LISTED_REENCODED],
            },
            "resumed": resumed,
            "duration_s": round(time.monotonic() - started, 3),
        }
        with atomic_writer(self.out_dir / MANIFEST) as file:
            file.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return manifest


def _difference(out_dir: Path, before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    before = before or {}
    changed = [key for key in now if key != "options" and before.get(key) != now[key]]
    old_options, new_options = before.get("options", {}), now["options"]
    changed += [
        f"--{key.replace('_', '-')} ({old_options.get(key)!r} -> {new_options.get(key)!r})"
        for key in sorted(set(old_options) | set(new_options))
        if old_options.get(key) != new_options.get(key)
    ]
    what = ", ".join(changed) or "its settings"
    return (
        f"{out_dir} holds a conversion with different settings ({what}); "
        "pass --overwrite to replace it, or choose another --out_dir"
    )


def _append(journal, record: dict[str, Any]) -> None:
    journal.write(orjson.dumps(record) + b"\n")
    journal.flush()


def _read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Every complete record of the journal; a torn last line (kill -9) is cut off."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    records: dict[int, dict[str, Any]] = {}
    good_end = 0
    position = 0
    for line in data.split(b"\n"):
        end = position + len(line) + 1
        if end > len(data):  # no newline: the write was cut short
            break
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            break
        records[record["i"]] = record
        good_end = end
        position = end
    if good_end != len(data):
        with open(path, "r+b") as file:
            file.truncate(good_end)
    return records


# --- worker side ---------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _setup_worker(converter: Converter, images_root: Path, link: bool) -> None:
    _worker["converter"] = converter
    _worker["media"] = MediaWriter(images_root, link=link)


def _build_in_worker(task: tuple[int, Item]) -> bytes:
    """One journal line for one item: the validated sample, or the reason it was skipped."""
    index, item = task
    converter: Converter = _worker["converter"]
    media: MediaWriter = _worker["media"]
    media.reencoded.clear()
    base = {"i": index, "split": item.split, "origin": item.origin}
    try:
        built = converter.build(item, media)
        sample = Sample(
            id=f"{item.split}-{index:010d}",
            source=converter.dataset_name,
            conversations=built.conversations,
            meta=built.meta or None,
        )
        record = {
            **base,
            "sample": orjson.loads(dumps_record(sample)),
            "reencoded": [list(entry) for entry in media.reencoded],
        }
    except (SkipItem, ImageProblem, SourceError, ValidationError, ValueError, OSError) as error:
        record = {**base, "skip": _reason(error)}
    except Exception as error:  # a converter bug must not lose the other items' work
        record = {**base, "skip": f"unexpected {type(error).__name__}: {error}"}
    return orjson.dumps(record) + b"\n"


def _reason(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        from phi3v_data.errors import describe_validation_error

        return "; ".join(f"{d.field}: {d.message}" for d in describe_validation_error(error))
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return str(error)
