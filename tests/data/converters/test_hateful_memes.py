"""The hateful_memes converter on both phases' raw fixtures: prompts, labels, skips, layouts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from phi3v_data import validate
from phi3v_data.cli import main
from phi3v_data.converter import SourceError
from phi3v_data.engine import convert
from tests.conftest import FIXTURES

PHASE1 = FIXTURES / "raw" / "hateful_memes_phase1" / "data"
PHASE2 = FIXTURES / "raw" / "hateful_memes_phase2"  # the parent of data/
PROMPT = 'Here is a meme. Its text reads: "{}"\nIs this meme hateful? Answer yes or no.'
# split -> (id, stored image, answer, label) in output order; label None = unlabeled.
TRAIN = [
    (42953, "img/42953.png", "no", 0),
    (23058, "img/23058.png", "no", 0),
    (13894, "img/13894.png", "yes", 1),
    (1235, "img/01235.png", "no", 0),
    (60817, "img/60817.png", "yes", 1),
]
DEV = [(8291, "img/08291.png", "no", 0), (46971, "img/46971.png", "yes", 1)]
TEST = [
    (16395, "img/16395.png", "", None),
    (37810, "img/37810.png", "", None),
    (64129, "img/64129.png", "", None),
]
EXPECTED_PHASE1 = {"train": TRAIN, "dev": DEV, "test": TEST}
EXPECTED_PHASE2 = {
    "train": TRAIN,
    "dev_seen": DEV,
    "dev_unseen": [
        (15740, "img/15740.png", "yes", 1),
        (29386, "img/29386.png", "no", 0),
        (71045, "img/71045.png", "yes", 1),
    ],
    "test_seen": TEST,
    "test_unseen": [
        (50812, "img/50812.png", "", None),
        (62374, "img/62374.png", "", None),
        (94016, "img/94016.png", "", None),
    ],
}


def run(src: Path, out: Path, workers: int = 1, **options: Any) -> dict[str, Any]:
    return convert(
        "hateful_memes", src=src, out_dir=out, workers=workers, progress=False, **options
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def texts(data_dir: Path) -> dict[int, str]:
    """id -> meme text, read from every parseable raw line."""
    found = {}
    for path in data_dir.glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            found[record["id"]] = record["text"]
    return found


def tree(root: Path) -> dict[str, bytes]:
    """Every output file but the manifest (which holds a duration), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def check_samples(out: Path, data_dir: Path, expected: dict[str, list[tuple]]) -> None:
    text_of = texts(data_dir)
    for split, rows in expected.items():
        samples = lines(out / f"hateful_memes_{split}.jsonl")
        assert len(samples) == len(rows), split
        for sample, (meme_id, image, answer, label) in zip(samples, rows, strict=True):
            assert sample["source"] == "hateful_memes"
            assert sample["id"].startswith(f"{split}-")
            assert sample["conversations"] == [
                {
                    "images": [f"hateful_memes/{image}"],
                    "user": PROMPT.format(text_of[meme_id]),
                    "assistant": answer,
                }
            ]
            meta = {"id": meme_id, "labeled": label is not None}
            assert sample["meta"] == meta | ({"label": label} if label is not None else {})
            stored = (out / "images/hateful_memes" / image).read_bytes()
            assert stored == (data_dir / image).read_bytes()  # copied byte for byte


def expected_skips(data_dir: Path, shown: str, dev: str) -> list[tuple[str, str, str]]:
    """(split, origin, what the reason must contain) of the fixtures' three broken items."""
    return [
        ("train", f"{shown}train.jsonl:4", "invalid JSON: "),
        ("train", f"{shown}train.jsonl:5 (id 37405)", f"{data_dir}/img/37405.png: not an image"),
        (dev, f"{shown}{dev}.jsonl:3 (id 82403)", f"not found: {data_dir}/img/82403.png"),
    ]


def check_skips(out: Path, expected: list[tuple[str, str, str]]) -> None:
    skipped = lines(out / "skipped.jsonl")
    assert [(s["split"], s["origin"]) for s in skipped] == [e[:2] for e in expected]
    for entry, (_, _, reason) in zip(skipped, expected, strict=True):
        assert reason in entry["reason"]


@pytest.fixture(scope="module")
def phase1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("hm1") / "out"
    return out, run(PHASE1, out)


@pytest.fixture(scope="module")
def phase2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("hm2") / "out"
    return out, run(PHASE2, out)


def test_phase1_samples_are_exact(phase1):
    out, manifest = phase1
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {
        "train": 5,
        "dev": 2,
        "test": 3,
    }
    check_samples(out, PHASE1, EXPECTED_PHASE1)


def test_one_sample_in_full(phase1):
    out, _ = phase1
    assert lines(out / "hateful_memes_train.jsonl")[3] == {
        "id": "train-0000000005",
        "source": "hateful_memes",
        "conversations": [
            {
                "images": ["hateful_memes/img/01235.png"],  # zero-padded name, from "img"
                "user": "Here is a meme. Its text reads: \"grandma's cooking 24/7 no "
                'complaints"\nIs this meme hateful? Answer yes or no.',
                "assistant": "no",
            }
        ],
        "meta": {"id": 1235, "label": 0, "labeled": True},
    }


def test_phase1_broken_items_are_skipped_with_reasons(phase1):
    out, manifest = phase1
    check_skips(out, expected_skips(PHASE1, "", "dev"))
    assert manifest["skipped"] == 3
    assert not (out / "images/hateful_memes/img/37405.png").exists()


def test_phase2_from_the_parent_folder_uses_file_stems_as_splits(phase2):
    out, manifest = phase2
    assert list(manifest["splits"]) == list(EXPECTED_PHASE2)
    check_samples(out, PHASE2 / "data", EXPECTED_PHASE2)
    check_skips(out, expected_skips(PHASE2 / "data", "data/", "dev_seen"))


@pytest.mark.parametrize("which", ["phase1", "phase2"])
def test_output_passes_validate_with_decode(which, request):
    out, manifest = request.getfixturevalue(which)
    report = validate(sorted(out.glob("hateful_memes_*.jsonl")), decode=True)
    assert report.errors == []
    assert report.samples == manifest["samples"]


def test_two_workers_write_the_same_output(phase2, tmp_path):
    out, _ = phase2
    run(PHASE2, tmp_path / "two", workers=2)
    assert tree(tmp_path / "two") == tree(out)


def test_labeled_only_leaves_unlabeled_memes_out(tmp_path):
    manifest = run(PHASE2, tmp_path / "out", labeled_only=True)
    assert list(manifest["splits"]) == ["train", "dev_seen", "dev_unseen"]
    assert manifest["skipped"] == 3  # the broken items only; leaving out is not skipping
    assert not list(tmp_path.glob("out/hateful_memes_test*.jsonl"))


def _clean_copy(tmp_path: Path) -> Path:
    """A phase-2 data/ folder holding only dev_unseen, which has no broken item."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    shutil.copyfile(PHASE2 / "data/dev_unseen.jsonl", data / "dev_unseen.jsonl")
    for _, image, _, _ in EXPECTED_PHASE2["dev_unseen"]:
        shutil.copyfile(PHASE2 / "data" / image, data / image)
    return data


def test_malformed_records_are_plan_skips_with_file_and_line(tmp_path):
    data = _clean_copy(tmp_path)
    good = (data / "dev_unseen.jsonl").read_bytes().splitlines()
    bad = [
        orjson.loads(good[0]) | {"label": 2},
        orjson.loads(good[1]) | {"img": "../escape.png"},
        {"id": 1, "img": "img/15740.png"},
    ]
    (data / "dev_unseen.jsonl").write_bytes(b"\n".join([good[2], *map(orjson.dumps, bad)]) + b"\n")
    run(data, tmp_path / "out")
    assert [(s["origin"], s["reason"]) for s in lines(tmp_path / "out/skipped.jsonl")] == [
        ("dev_unseen.jsonl:2", "label must be 0 or 1, got 2"),
        ("dev_unseen.jsonl:3", "img path '../escape.png' leaves the data folder"),
        ("dev_unseen.jsonl:4", "no text"),
    ]


def test_only_an_image_archive_asks_to_extract_it(tmp_path):
    data = _clean_copy(tmp_path)
    shutil.rmtree(data / "img")
    (data / "img.tar.gz").write_bytes(b"")
    with pytest.raises(SourceError, match=r"img\.tar\.gz; extract it first: tar -xzf"):
        run(tmp_path, tmp_path / "out")


def cli(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_exit_codes(tmp_path):
    common = ("--workers", "1", "--no-progress")
    result = cli("convert", "hateful_memes", "--src", PHASE1, "--out_dir", tmp_path / "a", *common)
    assert result.exit_code == 1, result.output
    assert "3 raw item(s) skipped" in result.output
    data = _clean_copy(tmp_path / "clean")
    result = cli("convert", "hateful_memes", "--src", data, "--out_dir", tmp_path / "b", *common)
    assert result.exit_code == 0, result.output
    result = cli(
        "convert", "hateful_memes", "--src", tmp_path, "--out-dir", tmp_path / "c", *common
    )
    assert result.exit_code == 2
    assert "expected the Hateful Memes data/ folder (or its parent)" in result.output
    shutil.rmtree(data / "img")
    (data / "img.tar.gz").write_bytes(b"")
    result = cli("convert", "hateful_memes", "--src", data, "--out_dir", tmp_path / "d", *common)
    assert result.exit_code == 2
    assert "extract it first" in result.output
