"""ucf101: both layouts, the official lists' quirks, group-disjoint val, exact frames."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data import convert, validate
from phi3v_data.cli import main
from tests.conftest import FIXTURES

RAW = FIXTURES / "raw"
OFFICIAL = RAW / "ucf101_official"
SUBSET = RAW / "UCF101_subset"


def load_make_raw():
    spec = importlib.util.spec_from_file_location("make_raw", FIXTURES / "make_raw.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_raw"] = module
    spec.loader.exec_module(module)
    return module


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def group_of(sample):
    return int(re.search(r"_g(\d+)_", sample["meta"]["video"]).group(1))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    out = tmp_path_factory.mktemp("ucf") / "out"
    manifest = convert("ucf101", src=OFFICIAL, out_dir=out, workers=2, progress=False)
    return out, manifest


def test_official_splits_and_skips(official):
    out, manifest = official
    counts = {split: entry["samples"] for split, entry in manifest["splits"].items()}
    assert list(counts) == ["train", "val", "test"]
    # split 1 tests groups 01-07; train groups 08, 15, 22, 25; val = the two highest groups.
    train, val, test = (lines(out / f"ucf101_{s}.jsonl") for s in ("train", "val", "test"))
    assert {group_of(s) for s in test} == {1}
    assert {group_of(s) for s in val} == {22, 25}
    assert {group_of(s) for s in train} == {8, 15}
    skipped = lines(out / "skipped.jsonl")
    assert [(s["split"], s["origin"]) for s in skipped] == [
        ("train", "UCF-101/Archery/v_Archery_g08_c01.avi")
    ]
    assert "truncated" in skipped[0]["reason"]
    assert manifest["skipped"] == 1


def test_official_prompt_labels_and_handstand_quirk(official):
    out, _ = official
    test = lines(out / "ucf101_test.jsonl")
    prompt = (
        "Classify the video into one of the following classes: "
        "ApplyEyeMakeup, Archery, BenchPress, HandstandPushups."
    )
    assert {s["conversations"][0]["user"] for s in test} == {prompt}
    handstand = [s for s in test if "HandStand" in s["meta"]["video"]]
    assert handstand and {s["conversations"][0]["assistant"] for s in handstand} == {
        "HandstandPushups"
    }
    first = handstand[0]["conversations"][0]["images"][0]
    assert first.startswith("test/HandstandPushups/v_HandStandPushups_g01_c0")
    assert first.endswith(".0.jpg")


def test_frames_are_exactly_the_requested_ones(official):
    make_raw = load_make_raw()
    out, _ = official
    checked = 0
    for split in ("train", "val", "test"):
        for sample in lines(out / f"ucf101_{split}.jsonl"):
            meta = sample["meta"]
            total = meta["total_frames"]
            assert meta["frames"] == [i * total // 8 for i in range(8)]
            for path, index in zip(
                sample["conversations"][0]["images"], meta["frames"], strict=True
            ):
                pixels = np.asarray(Image.open(out / "images" / path).convert("RGB"))
                assert make_raw.frame_index_from_pixels(pixels) == index, path
                checked += 1
    assert checked == 8 * 23


def test_official_output_validates_with_decode(official):
    out, _ = official
    report = validate(sorted(out.glob("ucf101_*.jsonl")), decode=True, num_crops=4)
    assert report.ok, [str(p) for p in report.errors]
    assert {length.images for length in report.lengths} == {8}


@pytest.mark.parametrize(("split_set", "test_group"), [(2, 8), (3, 15)])
def test_other_split_sets(tmp_path, split_set, test_group):
    out = tmp_path / "out"
    convert(
        "ucf101", src=OFFICIAL, out_dir=out, workers=1, progress=False, split_set=split_set,
        val_groups=0, num_frames=2,
    )  # fmt: skip
    assert {group_of(s) for s in lines(out / "ucf101_test.jsonl")} == {test_group}
    assert not (out / "ucf101_val.jsonl").exists()


@pytest.mark.parametrize("src", [SUBSET, RAW])
def test_subset_layout(tmp_path, src):
    out = tmp_path / "out"
    if src == RAW:  # the parent of UCF101_subset: use a folder holding only the subset
        (tmp_path / "parent").mkdir()
        (tmp_path / "parent" / "UCF101_subset").symlink_to(SUBSET)
        src = tmp_path / "parent"
    manifest = convert(
        "ucf101", src=src, out_dir=out, workers=1, progress=False, sampling="centers",
        num_frames=4,
    )  # fmt: skip
    assert {k: v["samples"] for k, v in manifest["splits"].items()} == {
        "train": 9,
        "val": 3,
        "test": 3,
    }
    reasons = {s["origin"]: s["reason"] for s in lines(out / "skipped.jsonl")}
    assert set(reasons) == {
        "UCF101_subset/train/ApplyLipstick/v_ApplyLipstick_g10_c01.avi",
        "UCF101_subset/train/Archery/v_Archery_g10_c02.avi",
    }
    sample = lines(out / "ucf101_train.jsonl")[0]
    total = sample["meta"]["total_frames"]
    assert sample["meta"]["frames"] == [(2 * i + 1) * total // 8 for i in range(4)]
    assert sample["conversations"][0]["user"] == (
        "Classify the video into one of the following classes: "
        "ApplyEyeMakeup, ApplyLipstick, Archery."
    )


def test_cli_unrecognised_src_and_offline_download(tmp_path, monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(
        main, ["convert", "ucf101", "--src", str(RAW / "nlvr2"), "--out_dir", str(tmp_path / "o")]
    )
    assert bad.exit_code == 2
    assert "expected the official release" in bad.output and "UCF101_subset" in bad.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # the constant is read when huggingface_hub is first imported, maybe by an earlier test
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = runner.invoke(main, ["convert", "ucf101", "--out_dir", str(tmp_path / "o")])
    assert offline.exit_code == 2
    assert "could not be downloaded" in offline.output and "--src" in offline.output
