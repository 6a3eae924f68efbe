"""The nlvr2 converter on the raw fixture: prompts, answers, meta, image pairs, skips, layouts."""

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
from phi3v_data.engine import ConvertError, convert
from tests.conftest import FIXTURES

SRC = FIXTURES / "raw" / "nlvr2"
PROMPT = (
    "The first image is the left image and the second image is the right image. "
    'Is the following statement true or false? "{}" Answer True or False.'
)
# identifier -> (answer, left image, right image), in output order per split.
EXPECTED = {
    "train": [
        ("train-4570-0-0", "True", "train/train-4570-0-img0.png", "train/train-4570-0-img1.png"),
        ("train-4570-0-1", "False", "train/train-4570-0-img0.png", "train/train-4570-0-img1.png"),
        ("train-4570-1-0", "False", "train/train-4570-1-img0.png", "train/train-4570-1-img1.png"),
        ("train-4570-1-1", "False", "train/train-4570-1-img0.png", "train/train-4570-1-img1.png"),
        ("train-10171-0-0", "True", "train/train-10171-0-img0.png", "train/train-10171-0-img1.png"),
        (
            "train-10171-0-1",
            "False",
            "train/train-10171-0-img0.png",
            "train/train-10171-0-img1.png",
        ),
        ("train-831-2-0", "True", "train/train-831-2-img0.jpg", "train/train-831-2-img1.png"),
        ("train-831-2-3", "False", "train/train-831-2-img0.jpg", "train/train-831-2-img1.png"),
    ],
    "dev": [
        ("dev-850-0-0", "True", "dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"),
        ("dev-850-0-1", "False", "dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"),
        ("dev-850-1-1", "True", "dev/dev-850-1-img0.png", "dev/dev-850-1-img1.png"),
    ],
    "test1": [
        ("test1-203-0-0", "True", "test1/test1-203-0-img0.png", "test1/test1-203-0-img1.jpg"),
        ("test1-203-0-1", "False", "test1/test1-203-0-img0.png", "test1/test1-203-0-img1.jpg"),
        ("test1-77-3-2", "True", "test1/test1-77-3-img0.png", "test1/test1-77-3-img1.png"),
    ],
}
MISSING_PAIR_SKIP = {
    "split": "dev",
    "origin": "data/dev.json:4 (dev-115-1-0)",
    "reason": "right image dev-115-1-img1.* not found in dev/",
}


def run(src: Path, out: Path, workers: int = 1, **options: Any) -> dict[str, Any]:
    return convert("nlvr2", src=src, out_dir=out, workers=workers, progress=False, **options)


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def raw_lines(split: str) -> dict[str, dict[str, Any]]:
    return {r["identifier"]: r for r in lines(SRC / "data" / f"{split}.json")}


def tree(root: Path) -> dict[str, bytes]:
    """Every output file but the manifest (which holds a duration), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("nlvr2") / "out"
    return out, run(SRC, out)


def test_every_split_has_exact_prompts_answers_images_and_meta(converted):
    out, manifest = converted
    assert {split: entry["samples"] for split, entry in manifest["splits"].items()} == {
        "train": 8,
        "dev": 3,
        "test1": 3,
    }
    for split, expected in EXPECTED.items():
        raw = raw_lines(split)
        samples = lines(out / f"nlvr2_{split}.jsonl")
        assert [s["meta"]["identifier"] for s in samples] == [e[0] for e in expected]
        for sample, (identifier, answer, left, right) in zip(samples, expected, strict=True):
            line = raw[identifier]
            assert sample["source"] == "nlvr2"
            assert sample["conversations"] == [
                {
                    "images": [f"nlvr2/{left}", f"nlvr2/{right}"],  # left (img0) first
                    "user": PROMPT.format(line["sentence"]),
                    "assistant": answer,
                }
            ]
            meta = {"identifier": identifier, "label": line["label"]}
            meta |= {"directory": line["directory"]} if split == "train" else {}
            assert sample["meta"] == meta | {"synset": line["synset"], "query": line["query"]}


def test_one_sample_in_full(converted):
    out, _ = converted
    assert lines(out / "nlvr2_train.jsonl")[0] == {
        "id": "train-0000000000",
        "source": "nlvr2",
        "conversations": [
            {
                "images": [
                    "nlvr2/train/train-4570-0-img0.png",
                    "nlvr2/train/train-4570-0-img1.png",
                ],
                "user": "The first image is the left image and the second image is the right "
                'image. Is the following statement true or false? "The right image contains '
                'exactly three balls." Answer True or False.',
                "assistant": "True",
            }
        ],
        "meta": {
            "identifier": "train-4570-0-0",
            "label": "True",
            "directory": 42,
            "synset": "ball",
            "query": "ball11",
        },
    }


def test_pair_with_missing_image_is_skipped_naming_the_file(converted):
    out, manifest = converted
    assert lines(out / "skipped.jsonl") == [MISSING_PAIR_SKIP]
    assert manifest["skipped"] == 1
    assert manifest["splits"]["dev"]["skipped"] == 1
    assert not (out / "images/nlvr2/dev/dev-115-1-img0.png").exists()


def test_jpeg_bytes_named_png_are_stored_as_jpg_byte_for_byte(converted):
    out, manifest = converted
    for raw, stored in [
        ("images/train/42/train-831-2-img0.png", "train/train-831-2-img0.jpg"),
        ("test1/test1-203-0-img1.png", "test1/test1-203-0-img1.jpg"),
    ]:
        assert (out / "images/nlvr2" / stored).read_bytes() == (SRC / raw).read_bytes()
    assert manifest["reencoded"]["count"] == 0


def test_shared_pairs_are_written_once(converted):
    out, _ = converted
    stored = {p.relative_to(out / "images/nlvr2").as_posix() for p in out.rglob("images/**/*.*")}
    used = {image for rows in EXPECTED.values() for row in rows for image in row[2:]}
    assert stored == used
    assert len(stored) == 16  # 8 pairs for 14 sentences


def test_output_passes_validate_with_decode(converted):
    out, _ = converted
    report = validate(sorted(out.glob("nlvr2_*.jsonl")), decode=True)
    assert report.errors == []
    assert report.samples == 14


def test_two_workers_write_the_same_output(converted, tmp_path):
    out, _ = converted
    run(SRC, tmp_path / "two", workers=2)
    assert tree(tmp_path / "two") == tree(out)


def _relayout(tmp_path: Path, folder_for: dict[str, str]) -> Path:
    """A copy of the fixture with each split's images moved flat into another folder."""
    root = tmp_path / "nlvr2"
    shutil.copytree(SRC / "data", root / "data")
    for image in SRC.rglob("*-img*.png"):
        split = image.name.split("-")[0]
        target = root / folder_for[split] / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    return root


@pytest.mark.parametrize(
    ("folders", "give_data_dir"),
    [
        ({"train": "images/train", "dev": "images/dev", "test1": "images/test1"}, False),
        ({"train": "train", "dev": "dev", "test1": "test1"}, True),
    ],
    ids=["flat-under-images", "per-split-folders-src-is-data"],
)
def test_other_image_layouts_give_the_same_samples(converted, tmp_path, folders, give_data_dir):
    out, _ = converted
    root = _relayout(tmp_path, folders)
    png_bytes = root / folders["dev"] / "dev-850-1-img0.png"
    png_bytes.rename(png_bytes.with_suffix(".jpeg"))  # found by stem whatever the extension
    run(root / "data" if give_data_dir else root, tmp_path / "out")
    for split in EXPECTED:
        name = f"nlvr2_{split}.jsonl"
        assert (tmp_path / "out" / name).read_bytes() == (out / name).read_bytes()
    skipped = lines(tmp_path / "out" / "skipped.jsonl")
    expected_reason = f"right image dev-115-1-img1.* not found in {folders['dev']}/"
    assert skipped == [MISSING_PAIR_SKIP | {"reason": expected_reason}]


def test_missing_image_folders_are_named_in_the_reason(tmp_path):
    shutil.copytree(SRC / "data", tmp_path / "data")
    run(tmp_path, tmp_path / "out", splits="test1")
    skipped = lines(tmp_path / "out" / "skipped.jsonl")
    assert len(skipped) == 3
    assert skipped[2] == {
        "split": "test1",
        "origin": "data/test1.json:3 (test1-77-3-2)",
        "reason": "left image test1-77-3-img0.* not found in images/test1/ (absent), "
        "test1/ (absent); right image test1-77-3-img1.* not found in images/test1/ (absent), "
        "test1/ (absent)",
    }


def test_missing_train_image_reason_names_the_directory_buckets(tmp_path):
    root = tmp_path / "nlvr2"
    shutil.copytree(SRC, root)
    (root / "images/train/7/train-10171-0-img0.png").unlink()
    run(root, tmp_path / "out", splits="train")
    assert [(s["origin"], s["reason"]) for s in lines(tmp_path / "out" / "skipped.jsonl")] == [
        (
            f"data/train.json:{number} (train-10171-0-{sentence})",
            "left image train-10171-0-img0.* not found in images/train/<directory>/, images/train/",
        )
        for number, sentence in [(5, 0), (6, 1)]
    ]


def test_balanced_and_unbalanced_files_reuse_the_dev_and_test1_images(tmp_path):
    root = tmp_path / "nlvr2"
    shutil.copytree(SRC, root)
    dev, test1 = (root / "data/dev.json").read_bytes(), (root / "data/test1.json").read_bytes()
    (root / "data/balanced").mkdir()
    (root / "data/unbalanced").mkdir()
    (root / "data/balanced/balanced_dev.json").write_bytes(b"\n".join(dev.splitlines()[:2]))
    (root / "data/unbalanced/unbalanced_test1.json").write_bytes(test1.splitlines()[2] + b"\n")
    manifest = run(root, tmp_path / "out", splits="unbalanced_test1, balanced_dev")
    assert manifest["identity"]["options"] == {"splits": "balanced_dev,unbalanced_test1"}
    assert list(manifest["splits"]) == ["balanced_dev", "unbalanced_test1"]
    balanced = lines(tmp_path / "out" / "nlvr2_balanced_dev.jsonl")
    assert [s["id"] for s in balanced] == ["balanced_dev-0000000000", "balanced_dev-0000000001"]
    assert balanced[1]["conversations"][0]["images"] == [
        "nlvr2/dev/dev-850-0-img0.png",
        "nlvr2/dev/dev-850-0-img1.png",
    ]
    unbalanced = lines(tmp_path / "out" / "nlvr2_unbalanced_test1.jsonl")
    assert unbalanced[0]["meta"]["identifier"] == "test1-77-3-2"
    assert not (tmp_path / "out" / "skipped.jsonl").exists()


def test_malformed_lines_are_plan_skips_with_file_and_line(tmp_path):
    root = tmp_path / "nlvr2"
    shutil.copytree(SRC, root)
    good = (root / "data/test1.json").read_bytes().splitlines()
    bad_label = orjson.loads(good[1]) | {"label": "maybe"}
    bad_id = orjson.loads(good[2]) | {"identifier": "test1-77-3"}
    (root / "data/test1.json").write_bytes(
        b"\n".join([good[0], b'{"identifier": "test1-1-0-0", "sent', orjson.dumps(bad_label)])
        + b"\n\n[1, 2]\n"
        + orjson.dumps(bad_id)
        + b"\n"
    )
    manifest = run(root, tmp_path / "out", splits="test1")
    assert manifest["splits"]["test1"] == {"file": "nlvr2_test1.jsonl", "samples": 1, "skipped": 4}
    skipped = lines(tmp_path / "out" / "skipped.jsonl")
    assert [s["origin"] for s in skipped] == [
        "data/test1.json:2",
        "data/test1.json:3",
        "data/test1.json:5",
        "data/test1.json:6",
    ]
    assert skipped[0]["reason"].startswith("invalid JSON: ")
    assert [s["reason"] for s in skipped[1:]] == [
        'label must be "True" or "False", got \'maybe\'',
        "line is not a JSON object",
        "identifier 'test1-77-3' is not <split>-<set>-<pair>-<sentence>",
    ]


def test_unrecognised_src_and_unknown_or_absent_splits_are_refused(tmp_path):
    with pytest.raises(SourceError, match="expected the NLVR2 root, holding data/train"):
        run(tmp_path, tmp_path / "out")
    with pytest.raises(ConvertError, match="unknown split"):
        run(SRC, tmp_path / "out", splits="train,val")
    with pytest.raises(SourceError, match="--splits asks for test2"):
        run(SRC, tmp_path / "out", splits="test2")


def cli(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_exit_codes(tmp_path):
    common = ("--workers", "1", "--no-progress")
    result = cli("convert", "nlvr2", "--src", SRC, "--out_dir", tmp_path / "all", *common)
    assert result.exit_code == 1, result.output
    assert "1 raw item(s) skipped" in result.output
    result = cli(
        "convert", "nlvr2", "--src", SRC, "--out_dir", tmp_path / "t", "--splits", "train", *common
    )
    assert result.exit_code == 0, result.output
    result = cli("convert", "nlvr2", "--src", tmp_path, "--out_dir", tmp_path / "x", *common)
    assert result.exit_code == 2
    assert "expected the NLVR2 root" in result.output
