"""validate and stats on the hand-written sample layout and on the raw fixtures' broken files."""

from __future__ import annotations

import shutil

import orjson

from phi3v_data import stats, validate
from tests.conftest import FIXTURES, sample

SAMPLE = FIXTURES / "sample"
RAW = FIXTURES / "raw"


def test_sample_layout_is_clean_with_exact_image_tokens():
    files = sorted(SAMPLE.glob("*.jsonl"))
    report = validate(files, decode=True, num_crops=4, max_length=8192)
    assert report.ok, [str(p) for p in report.errors]
    assert report.samples == 12 and not report.warnings
    by_id = {(s.file.rsplit("/", 1)[-1], s.id): s for s in report.lengths}
    assert by_id[("chat_train.jsonl", "chat-1")].image_tokens == 2 * 757
    assert by_id[("nlvr2_dev.jsonl", "dev-0000000000")].images == 2


def test_sample_layout_stats():
    result = stats(sorted(SAMPLE.glob("*.jsonl")), num_crops=16)
    assert result["samples"] == 12
    assert result["splits"] == {"train": 7, "val": 2, "dev": 3}
    assert result["sources"]["docvqa"] == 5
    assert result["images"]["distinct"] == 9 and result["images"]["unreadable"] == 0
    # 850x1100 page at 16 crops: scale 4 on the long side, 1038 px padded to 1344 -> 4x4 crops
    assert result["image_tokens_per_image"]["max"] == (16 + 1) * 144 + 1 + 5 * 12


def test_raw_fixture_defects_are_caught_by_decode(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    broken = {
        "truncated.png": RAW / "docvqa_rrc/spdocvqa_images/nkbl0226_3.png",
        "not-an-image.png": RAW / "hateful_memes_phase2/data/img/37405.png",
        "jpeg-named-png.png": next(
            p for p in (RAW / "nlvr2").rglob("*.png") if p.read_bytes()[:2] == b"\xff\xd8"
        ),
    }
    for name, source in broken.items():
        shutil.copy(source, images / name)
    path = tmp_path / "raw_train.jsonl"
    path.write_bytes(
        b"\n".join(orjson.dumps(sample(name, images=[name])) for name in broken) + b"\n"
    )
    report = validate([path], decode=True)
    assert [(p.id, p.kind) for p in report.errors] == [
        ("truncated.png", "bad-image"),
        ("not-an-image.png", "bad-image"),
    ]
