"""``hf``: named columns of parquet files and ``datasets`` folders become samples."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data import convert, validate
from phi3v_data.cli import main
from phi3v_data.converter import SourceError
from phi3v_data.engine import ConvertError
from tests.conftest import FIXTURES

M4 = FIXTURES / "raw/docvqa_hf_m4"
NIELSR = FIXTURES / "raw/docvqa_nielsr"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(src: Path | str, out: Path, **options: Any) -> dict[str, Any]:
    manifest = convert("hf", src=src, out_dir=out, progress=False, **options)
    report = validate([out / split["file"] for split in manifest["splits"].values()], decode=True)
    assert report.ok, report.errors
    return manifest


def image_bytes(colour: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def stored(out: Path, line: dict[str, Any]) -> list[bytes]:
    return [(out / "images" / p).read_bytes() for p in line["conversations"][0]["images"]]


def test_huggingfacem4_columns_exactly(tmp_path):
    out = tmp_path / "out"
    manifest = run(M4, out, workers=1, answer_col="answers", id_col="questionId")
    assert list(manifest["splits"]) == ["train", "val", "test"]
    source = pq.read_table(M4 / "data/train-00000-of-00001.parquet").to_pylist()
    train = read_lines(out / "hf_train.jsonl")
    assert [line["meta"]["questionId"] for line in train] == [337, 338, 339, 1024, 2210, 2288]
    first = train[0]
    assert first["id"] == "train-0000000000" and first["source"] == "hf"
    assert first["conversations"][0]["user"] == "What is the date mentioned in this memo?"
    assert first["conversations"][0]["assistant"] == "March 4, 1975"
    assert first["meta"] == {
        "answers": ["March 4, 1975", "march 4, 1975"],
        "labeled": True,
        "questionId": 337,
    }
    for line, row in zip(train, [r for r in source if r["questionId"] != 1025], strict=True):
        assert stored(out, line) == [row["image"]["bytes"]]  # copied, never re-encoded
    assert train[4]["conversations"][0]["images"][0].endswith(".jpg")  # JPEG bytes
    assert read_lines(out / "skipped.jsonl") == [
        {
            "split": "train",
            "origin": "data/train-00000-of-00001.parquet row 4",
            "reason": "questionId 1025: not an image file (unrecognised format)",
        }
    ]
    test = read_lines(out / "hf_test.jsonl")
    assert [line["conversations"][0]["assistant"] for line in test] == ["", "", ""]
    assert {line["meta"]["labeled"] for line in test} == {False}
    # 8 distinct pages in 13 rows; each page stored once, the corrupt bytes not at all
    assert len(list((out / "images").rglob("*.*"))) == 8


def test_nested_question_column_prompt_and_two_workers(tmp_path):
    options = {
        "question_col": "query.en",
        "answer_col": "answers",
        "id_col": "id",
        "prompt": "{question}\nAnswer briefly.",
    }
    run(NIELSR / "data", tmp_path / "one", workers=1, **options)
    run(NIELSR / "data", tmp_path / "two", workers=2, **options)
    for name in ("hf_train.jsonl", "hf_test.jsonl"):
        assert read_lines(tmp_path / "one" / name) == read_lines(tmp_path / "two" / name)
    test = read_lines(tmp_path / "one/hf_test.jsonl")
    assert test[1]["conversations"][0] == {
        "images": test[0]["conversations"][0]["images"],  # the same page, one file
        "user": "What is the amount due?\nAnswer briefly.",
        "assistant": "$ 86.40",
    }
    assert test[1]["meta"] == {"answers": ["$ 86.40", "$86.40"], "labeled": True, "id": "49154"}


@pytest.fixture
def own_table(tmp_path: Path) -> Path:
    """A user's table: every image column kind, a nested struct, scalar and list answers."""
    src = tmp_path / "src"
    (src / "pics").mkdir(parents=True)
    (src / "pics/a.png").write_bytes(image_bytes("red"))
    (src / "pics/b.png").write_bytes(image_bytes("blue", "JPEG"))  # JPEG under .png
    red, green = image_bytes("red"), image_bytes("green")
    columns = {
        "key": pa.array([10, 11, 12]),
        "struct": pa.array(
            [{"bytes": red, "path": "x.png"}, {"bytes": green, "path": None}, None], IMAGE
        ),
        "raw": pa.array([red, green, b"not an image"]),
        "path": pa.array(["pics/a.png", "pics/b.png", "pics/missing.png"]),
        "many": pa.array(
            [[{"bytes": red, "path": None}, {"bytes": None, "path": "pics/b.png"}], [], None],
            pa.list_(IMAGE),
        ),
        "text": pa.array([{"q": "Colour?"}, {"q": "Shade?"}, {"q": None}]),
        "label": pa.array([1, 0, 1]),
        "answers": pa.array([["red", "crimson"], None, []], pa.list_(pa.string())),
    }
    pq.write_table(pa.table(columns), src / "train-00000-of-00001.parquet")
    return src


def test_every_image_column_kind(tmp_path, own_table):
    src = own_table
    red, green = image_bytes("red"), image_bytes("green")
    blue = (src / "pics/b.png").read_bytes()
    cases = {"struct": [[red], [green]], "raw": [[red], [green]], "path": [[red], [blue]]}
    for column, expected in cases.items():
        out = tmp_path / column
        run(src, out, workers=1, image_col=column, question_col="text.q", answer_col="label")
        lines = read_lines(out / "hf_train.jsonl")
        assert [stored(out, line) for line in lines] == expected
        assert [line["conversations"][0]["assistant"] for line in lines] == ["1", "0"]
        assert [line["conversations"][0]["user"] for line in lines] == ["Colour?", "Shade?"]
        reasons = [s["reason"] for s in read_lines(out / "skipped.jsonl")]
        assert len(reasons) == 1 and "row 2" in read_lines(out / "skipped.jsonl")[0]["origin"]
    assert read_lines(tmp_path / "path/hf_train.jsonl")[1]["conversations"][0]["images"] == [
        "hf/pics/b.jpg"  # a path image keeps its path; the real format names it
    ]
    assert read_lines(tmp_path / "raw/skipped.jsonl")[0]["reason"].startswith(
        "column raw: not an image file"
    )
    assert read_lines(tmp_path / "path/skipped.jsonl")[0]["reason"] == (
        "image file not found: pics/missing.png"
    )


def test_a_list_column_is_several_images_in_one_turn(tmp_path, own_table):
    out = tmp_path / "out"
    run(own_table, out, workers=1, image_col="many", question_col="", answer_col="answers")
    [line] = read_lines(out / "hf_train.jsonl")
    blue = (own_table / "pics/b.png").read_bytes()
    assert stored(out, line) == [image_bytes("red"), blue]
    assert line["conversations"][0]["user"] == ""
    assert line["meta"] == {"answers": ["red", "crimson"], "labeled": True}
    skipped = read_lines(out / "skipped.jsonl")
    assert [s["reason"] for s in skipped] == ["no image in column 'many'"] * 2


def test_rows_without_answers_are_unlabeled(tmp_path, own_table):
    out = tmp_path / "out"
    run(own_table, out, workers=1, image_col="raw", question_col="", answer_col="answers")
    lines = read_lines(out / "hf_train.jsonl")
    assert [line["meta"]["labeled"] for line in lines] == [True, False]
    assert lines[1]["conversations"][0]["assistant"] == "" and lines[1]["meta"]["answers"] == []


def test_split_names_from_files_and_overrides(tmp_path):
    table = pq.read_table(M4 / "data/test-00000-of-00001.parquet")
    src = tmp_path / "src"
    for name in (
        "validation-00000-of-00002.parquet",
        "validation-00001-of-00002.parquet",
        "data/test/0000.parquet",
        "testdev-00000-of-00001.parquet",
        "mine.parquet",
    ):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(0, 1), src / name)
    manifest = run(src, tmp_path / "a", workers=1, answer_col="answers")
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {
        "train": 1,
        "val": 2,
        "test": 1,
        "testdev": 1,
    }
    manifest = run(src, tmp_path / "b", workers=1, answer_col="answers", split="dev", name="mine")
    assert manifest["splits"] == {"dev": {"file": "mine_dev.jsonl", "samples": 5, "skipped": 0}}
    assert read_lines(tmp_path / "b/mine_dev.jsonl")[0]["source"] == "mine"
    with pytest.raises(ConvertError, match="--name"):
        convert("hf", src=src, out_dir=tmp_path / "c", name="../up")


def write_saved_dataset(folder: Path, rows: list[dict[str, Any]], split: str | None) -> None:
    """What ``Dataset.save_to_disk`` writes (datasets 5.2): an Arrow stream and state.json."""
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([("image", IMAGE), ("q", pa.string())]))
    path = str(folder / "data-00000-of-00001.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1)
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}
    (folder / "state.json").write_text(json.dumps(state))


def test_datasets_save_to_disk_folders(tmp_path):
    rows = [{"image": {"bytes": image_bytes(c), "path": None}, "q": c} for c in ("red", "tan")]
    write_saved_dataset(tmp_path / "one", rows, None)
    options = {"question_col": "", "answer_col": "q", "workers": 1}
    manifest = run(tmp_path / "one", tmp_path / "out1", **options)
    assert manifest["splits"]["train"]["samples"] == 2
    lines = read_lines(tmp_path / "out1/hf_train.jsonl")
    assert stored(tmp_path / "out1", lines[1]) == [image_bytes("tan")]
    write_saved_dataset(tmp_path / "dict/train", rows, "train")
    write_saved_dataset(tmp_path / "dict/validation", rows[:1], "validation")
    (tmp_path / "dict/dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
    manifest = run(tmp_path / "dict", tmp_path / "out2", **options)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {"train": 2, "val": 1}
    origins = [
        line["conversations"][0]["assistant"] for line in read_lines(tmp_path / "out2/hf_val.jsonl")
    ]
    assert origins == ["red"]


def test_hub_id_needs_datasets_and_reads_what_it_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(SourceError, match=r"needs the datasets package \(pip install datasets\)"):
        convert("hf", src="owner/name", out_dir=tmp_path / "o")
    write_saved_dataset(
        tmp_path / "cache", [{"image": {"bytes": image_bytes("red")}, "q": "a"}], None
    )
    cached = types.SimpleNamespace(
        cache_files=[{"filename": str(tmp_path / "cache/data-00000-of-00001.arrow")}]
    )
    calls: list[str] = []

    def load_dataset(hub_id: str) -> dict[str, Any]:
        calls.append(hub_id)
        return {"validation": cached}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    manifest = run("owner/name", tmp_path / "out", workers=1, question_col="", answer_col="q")
    assert calls == ["owner/name"] and manifest["splits"]["val"]["samples"] == 1


def test_missing_columns_and_unknown_sources_are_usage_errors(tmp_path):
    with pytest.raises(SourceError) as error:
        convert("hf", src=NIELSR / "data", out_dir=tmp_path / "o", question_col="query.xx")
    assert str(error.value) == (
        "train-00000-of-00001.parquet has no column 'query.xx'; its columns are: id, image, "
        "query, query.de, query.en, query.es, query.fr, query.it, answers, words, "
        "bounding_boxes, answer, answer.match_score, answer.matched_text, answer.start, "
        "answer.text"
    )
    runner = CliRunner()
    args = ["convert", "hf", "--workers", "1", "--no-progress", "--out_dir"]
    result = runner.invoke(main, [*args, str(tmp_path / "a"), "--src", str(M4)])
    assert result.exit_code == 2 and "has no column 'answer'" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, [*args, str(tmp_path / "b"), "--src", str(tmp_path / "empty")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "a .parquet file, a folder of .parquet files" in message and "save_to_disk" in message
    assert "Traceback" not in result.output


def test_cli_exit_status_and_typed_newline(tmp_path):
    runner = CliRunner()
    base = ["convert", "hf", "--workers", "1", "--no-progress", "--answer-col", "answers"]
    result = runner.invoke(main, [*base, "--src", str(M4), "--out_dir", str(tmp_path / "a")])
    assert result.exit_code == 1, result.output  # questionId 1025 was skipped
    prompt = ["--prompt", r"{question}\nAnswer briefly.", "--question-col", "query.en"]
    args = [*base, *prompt, "--src", str(NIELSR), "--out_dir", str(tmp_path / "b")]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    first = read_lines(tmp_path / "b/hf_train.jsonl")[0]["conversations"][0]
    assert first["user"] == "What is the date mentioned in this memo?\nAnswer briefly."
