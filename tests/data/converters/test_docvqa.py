"""``docvqa`` on every fixture layout: exact lines, the deliberate defects, one file per page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from phi3v_data import convert, validate
from phi3v_data.cli import main
from phi3v_data.converter import SourceError
from tests.conftest import FIXTURES

RAW = FIXTURES / "raw"
RRC = RAW / "docvqa_rrc"
M4 = RAW / "docvqa_hf_m4"
LMMS = RAW / "docvqa_lmms"
NIELSR = RAW / "docvqa_nielsr"
QAS = {
    "train": "spdocvqa_qas/train_v1.0_withQT.json",
    "val": "spdocvqa_qas/val_v1.0_withQT.json",
    "test": "spdocvqa_qas/test_v1.0.json",
}
# Every page the fixtures use, as the converter must name it: the real format decides.
PAGES = {
    "xnbl0037_1": "docvqa/xnbl0037_1.png",
    "fzhw0224_2": "docvqa/fzhw0224_2.png",
    "ljcl0227_1": "docvqa/ljcl0227_1.jpg",  # JPEG bytes under a .png name
    "nkbl0226_3": "docvqa/nkbl0226_3.png",
    "pybv0228_81": "docvqa/pybv0228_81.png",
    "hrfw0227_24": "docvqa/hrfw0227_24.png",
    "snbx0223_22": "docvqa/snbx0223_22.png",
    "mxcj0037_9": "docvqa/mxcj0037_9.png",
}


def rrc_records() -> list[tuple[str, dict[str, Any]]]:
    """(split, record) of every fixture question in plan order: train, val, test."""
    return [
        (split, record)
        for split, name in QAS.items()
        for record in json.loads((RRC / name).read_text())["data"]
    ]


def expected_line(
    index: int, split: str, record: dict[str, Any], *, ids: type = int, extras: bool = True
) -> dict[str, Any]:
    """The line the converter must write for one RRC question (``ids`` is how the copy
    types questionId; ``extras`` whether it has question_types/docId/ucsf fields)."""
    answers = record.get("answers", [])
    meta: dict[str, Any] = {
        "questionId": ids(record["questionId"]),
        "answers": answers,
        "labeled": bool(answers),
    }
    if extras:
        keys = ("question_types", "docId", "ucsf_document_id", "ucsf_document_page_no")
        meta.update({key: record[key] for key in keys if key in record})
    page = Path(record["image"]).stem
    return {
        "id": f"{split}-{index:010d}",
        "source": "docvqa",
        "conversations": [
            {
                "images": [PAGES[page]],
                "user": f"{record['question']}\nAnswer briefly.",
                "assistant": answers[0] if answers else "",
            }
        ],
        "meta": meta,
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem.removeprefix("docvqa_"): read_lines(p) for p in sorted(out.glob("docvqa_*"))}


def image_files(out: Path) -> list[str]:
    root = out / "images"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def run(src: Path, out: Path, **options: Any) -> dict[str, Any]:
    manifest = convert("docvqa", src=src, out_dir=out, progress=False, **options)
    files = [out / split["file"] for split in manifest["splits"].values()]
    report = validate(files, decode=True)
    assert report.ok, report.errors
    return manifest


def test_rrc_release_exact_lines_and_defects(tmp_path):
    out = tmp_path / "out"
    manifest = run(RRC, out, workers=1)
    expected: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for index, (split, record) in enumerate(rrc_records()):
        if record["questionId"] not in (2288, 51002):  # broken page, missing page
            expected[split].append(expected_line(index, split, record))
    assert outputs(out) == expected
    assert expected["train"][0] == {
        "id": "train-0000000000",
        "source": "docvqa",
        "conversations": [
            {
                "images": ["docvqa/xnbl0037_1.png"],
                "user": "What is the date mentioned in this memo?\nAnswer briefly.",
                "assistant": "March 4, 1975",
            }
        ],
        "meta": {
            "questionId": 337,
            "answers": ["March 4, 1975", "march 4, 1975"],
            "labeled": True,
            "question_types": ["layout"],
            "docId": 14465,
            "ucsf_document_id": "xnbl0037",
            "ucsf_document_page_no": "1",
        },
    }
    assert expected["test"][0]["conversations"][0]["assistant"] == ""
    assert expected["test"][0]["meta"]["labeled"] is False
    skipped = read_lines(out / "skipped.jsonl")
    assert [(s["split"], s["origin"]) for s in skipped] == [
        ("train", f"{QAS['train']} questionId 2288"),
        ("val", f"{QAS['val']} questionId 51002"),
    ]
    assert "nkbl0226_3.png: image cannot be decoded" in skipped[0]["reason"]
    assert skipped[1]["reason"].startswith("page image not found: documents/hrfw0227_24.png")
    assert manifest["skipped"] == 2 and manifest["samples"] == 11
    # every page once, shared by all of its questions; the broken ones not at all
    assert image_files(out) == sorted(
        path for page, path in PAGES.items() if page not in ("nkbl0226_3", "hrfw0227_24")
    )


def test_jpeg_bytes_under_png_name_are_copied_as_jpg(tmp_path):
    run(RRC, tmp_path / "rrc", workers=1)
    source = (RRC / "spdocvqa_images/ljcl0227_1.png").read_bytes()
    assert source.startswith(b"\xff\xd8")
    assert (tmp_path / "rrc/images/docvqa/ljcl0227_1.jpg").read_bytes() == source
    run(M4 / "data/train-00000-of-00001.parquet", tmp_path / "m4", workers=1)
    assert (tmp_path / "m4/images/docvqa/ljcl0227_1.jpg").read_bytes() == source


def test_huggingfacem4_parquet_with_one_and_two_workers(tmp_path):
    manifest = run(M4, tmp_path / "one", workers=1)
    expected: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for index, (split, record) in enumerate(rrc_records()):
        if record["questionId"] != 1025:  # corrupt bytes; every page is embedded otherwise
            expected[split].append(expected_line(index, split, record))
    assert outputs(tmp_path / "one") == expected
    assert read_lines(tmp_path / "one/skipped.jsonl") == [
        {
            "split": "train",
            "origin": "data/train-00000-of-00001.parquet row 4",
            "reason": "questionId 1025: not an image file (unrecognised format)",
        }
    ]
    assert manifest["splits"]["val"] == {"file": "docvqa_val.jsonl", "samples": 3, "skipped": 0}
    assert image_files(tmp_path / "one") == sorted(PAGES.values())
    run(M4, tmp_path / "two", workers=2)
    assert outputs(tmp_path / "two") == expected
    assert image_files(tmp_path / "two") == sorted(PAGES.values())


def test_lmms_parquet_keeps_string_question_ids(tmp_path):
    run(LMMS, tmp_path / "out", workers=1)
    records = [(s, r) for s, r in rrc_records() if s != "train"]
    expected: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
    for index, (split, record) in enumerate(records):
        expected[split].append(expected_line(index, split, record, ids=str))
    assert outputs(tmp_path / "out") == expected
    assert not (tmp_path / "out/skipped.jsonl").exists()


def test_nielsr_uses_query_en_and_stores_each_page_once(tmp_path):
    run(NIELSR, tmp_path / "out", workers=1)
    lines = outputs(tmp_path / "out")
    records = [r for s, r in rrc_records() if s != "test"]  # train = RRC train, test = RRC val
    got = [line for split in ("train", "test") for line in lines[split]]
    assert [line["id"] for line in got] == [f"train-{i:010d}" for i in range(7)] + [
        f"test-{i:010d}" for i in range(7, 10)
    ]
    for line, record in zip(got, records, strict=True):
        want = expected_line(0, "x", record, ids=str, extras=False)
        assert line["conversations"][0]["user"] == want["conversations"][0]["user"]
        assert line["conversations"][0]["assistant"] == want["conversations"][0]["assistant"]
        assert line["meta"] == want["meta"]
    # no page names in this copy: pages are named by content, so shared pages stay shared
    by_page: dict[str, set[str]] = {}
    for line, record in zip(got, records, strict=True):
        by_page.setdefault(Path(record["image"]).stem, set()).add(
            line["conversations"][0]["images"][0]
        )
    assert all(len(paths) == 1 for paths in by_page.values())
    assert len({next(iter(p)) for p in by_page.values()}) == len(by_page) == 6
    assert len(image_files(tmp_path / "out")) == 6


@pytest.mark.parametrize(
    ("src", "splits"),
    [
        (M4 / "data/validation-00000-of-00001.parquet", ["val"]),
        (M4 / "data", ["train", "val", "test"]),
        (LMMS / "DocVQA", ["val", "test"]),
    ],
)
def test_a_parquet_file_or_folder_is_a_source(tmp_path, src, splits):
    manifest = run(src, tmp_path / "out", workers=1)
    assert list(manifest["splits"]) == splits


@pytest.mark.parametrize(
    ("images_dir", "qas_name"),
    [("images", "train_v1.0.json"), ("documents", "train_v1.0_withQT.json")],
)
def test_rrc_image_folder_and_annotation_names(tmp_path, images_dir, qas_name):
    src = tmp_path / "src"
    shutil.copytree(RRC, src)
    (src / "spdocvqa_images").rename(src / images_dir)
    (src / QAS["train"]).rename(src / "spdocvqa_qas" / qas_name)
    run(src / "spdocvqa_qas", tmp_path / "out", workers=1)  # the qas folder itself works too
    lines = outputs(tmp_path / "out")
    assert [len(lines[s]) for s in ("train", "val", "test")] == [6, 2, 3]


def test_rrc_image_field_resolves_against_the_root_first(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(RRC, src)
    (src / "documents").mkdir()
    # documents/ (the json's own path) holds a different, valid copy of one page
    shutil.copy(src / "spdocvqa_images/mxcj0037_9.png", src / "documents/pybv0228_81.png")
    run(src, tmp_path / "out", workers=1)
    copied = (tmp_path / "out/images/docvqa/pybv0228_81.png").read_bytes()
    assert copied == (src / "documents/pybv0228_81.png").read_bytes()


def test_labeled_only_leaves_out_unlabeled_questions(tmp_path):
    manifest = run(RRC, tmp_path / "rrc", workers=1, labeled_only=True)
    assert list(manifest["splits"]) == ["train", "val"]
    assert manifest["skipped"] == 2  # the broken pages are still reported
    manifest = run(LMMS, tmp_path / "lmms", workers=1, labeled_only=True)
    assert list(manifest["splits"]) == ["val"] and manifest["skipped"] == 0
    # an unlabeled row inside a labeled file is left out too, with the others kept in order
    table = pq.read_table(M4 / "data/validation-00000-of-00001.parquet")
    answers = table.column("answers").to_pylist()
    answers[1] = None
    src = tmp_path / "mixed/validation-00000-of-00001.parquet"
    src.parent.mkdir()
    pq.write_table(table.set_column(7, "answers", [answers]), src)
    run(src, tmp_path / "mixed_out", workers=1, labeled_only=True)
    assert [line["meta"]["questionId"] for line in outputs(tmp_path / "mixed_out")["val"]] == [
        49153,
        51002,
    ]
    run(src, tmp_path / "mixed_all", workers=1)
    middle = outputs(tmp_path / "mixed_all")["val"][1]
    assert middle["conversations"][0]["assistant"] == "" and middle["meta"]["labeled"] is False


def test_malformed_annotations_are_skipped_with_reasons(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(RRC, src)
    val = json.loads((src / QAS["val"]).read_text())
    del val["data"][0]["question"]
    (src / QAS["val"]).write_text(json.dumps(val))
    (src / QAS["test"]).write_text("{not json")
    run(src, tmp_path / "out", workers=1)
    skipped = read_lines(tmp_path / "out/skipped.jsonl")
    assert skipped[1] == {
        "split": "val",
        "origin": f"{QAS['val']} questionId 49153 (record 0)",
        "reason": "malformed record: no 'question'",
    }
    assert skipped[3]["origin"] == QAS["test"]
    assert skipped[3]["reason"].startswith("not a DocVQA annotation file: invalid JSON")


def test_parquet_is_read_one_row_group_at_a_time(tmp_path, monkeypatch):
    src = tmp_path / "src/train-00000-of-00001.parquet"
    src.parent.mkdir()
    pq.write_table(pq.read_table(M4 / "data/train-00000-of-00001.parquet"), src, row_group_size=2)
    reads: list[tuple[int, tuple[str, ...]]] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, group, columns=None, **kwargs):
        reads.append((group, tuple(columns or ())))
        return original(self, group, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", None)  # never the whole file
    monkeypatch.setattr(pq, "read_table", None)
    run(src, tmp_path / "out", workers=1)
    assert [group for group, _ in reads] == [0, 1, 2, 3]  # 7 rows in groups of 2, each once
    assert len(outputs(tmp_path / "out")["train"]) == 6


def test_cli_exit_codes_and_unrecognised_source(tmp_path):
    runner = CliRunner()
    args = ["convert", "docvqa", "--workers", "1", "--no-progress", "--out_dir"]
    skipped = runner.invoke(main, [*args, str(tmp_path / "a"), "--src", str(RRC)])
    assert skipped.exit_code == 1, skipped.output
    clean = runner.invoke(main, [*args, str(tmp_path / "b"), "--src", str(LMMS)])
    assert clean.exit_code == 0, clean.output
    (tmp_path / "empty").mkdir()
    bad = runner.invoke(main, [*args, str(tmp_path / "c"), "--src", str(tmp_path / "empty")])
    assert bad.exit_code == 2
    assert "is not a DocVQA layout" in bad.output
    for layout in ("spdocvqa_qas/", "data/{train,validation,test}-*.parquet", "DocVQA/"):
        assert layout in " ".join(bad.output.split())
    assert "Traceback" not in bad.output


def test_parquet_without_docvqa_columns_is_refused(tmp_path):
    table = pq.read_table(M4 / "data/test-00000-of-00001.parquet").drop_columns(["question"])
    pq.write_table(table, tmp_path / "test.parquet")
    with pytest.raises(SourceError, match="needs image, answers, and question"):
        convert("docvqa", src=tmp_path / "test.parquet", out_dir=tmp_path / "out")
