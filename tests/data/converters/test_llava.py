"""``llava``: LLaVA JSON/JSONL in, tag-renumbered phi3v samples out; every bad record a skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data import validate
from phi3v_data.cli import main
from phi3v_data.converter import split_from_name
from phi3v_data.converters.llava import read_records
from phi3v_data.engine import convert


def image(path: Path, size: tuple[int, int] = (40, 30), color: str = "red", fmt: str = "JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def turns(*pairs: str, system: str | None = None) -> list[dict[str, str]]:
    """human/gpt messages from alternating texts, with an optional leading system message."""
    messages = [{"from": "system", "value": system}] if system else []
    roles = ("human", "gpt")
    return messages + [{"from": roles[i % 2], "value": text} for i, text in enumerate(pairs)]


def write_json_list(path: Path, records: list[Any]) -> Path:
    """One record per line after '[' so record k (from 0) starts on line k + 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


GOOD = [
    {"id": "one", "image": "imgs/a.jpg", "conversations": turns("<image>\nWhat is it?", "Red.")},
    {
        "id": "multi",
        "image": ["imgs/a.jpg", "imgs/b.png", "imgs/sub/c.jpg"],
        "conversations": turns("<image>\nCompare with <image>.", "Same.", "And <image>?", "Blue."),
    },
    {
        "id": 7,
        "image": ["imgs/a.jpg", "imgs/b.png"],
        "conversations": turns("Which is wider?", "The first.", "Sure?", "Yes."),
    },
    {
        "id": "text",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "user", "value": "2+2?"},
            {"from": "assistant", "value": "4"},
        ],
    },
]
BAD = [
    ({"id": "tags", "image": "imgs/a.jpg", "conversations": turns("<image><image>", "x")},
     "2 <image> tag(s) but 1 image(s)"),
    ({"id": "notags", "conversations": turns("<image> hi", "x")},
     "1 <image> tag(s) but 0 image(s)"),
    ({"id": "gone", "image": "imgs/missing.jpg", "conversations": turns("<image>", "x")},
     "image file not found"),
    ({"id": "gptfirst", "conversations": [{"from": "gpt", "value": "x"}]},
     "conversations[0]: gpt message before any human message"),
    ({"id": "number", "conversations": [{"from": "human", "value": 3},
                                        {"from": "gpt", "value": "x"}]},
     "conversations[0].value must be a string, got a number"),
    ({"id": "twohuman", "conversations": [{"from": "human", "value": "a"},
                                          {"from": "human", "value": "b"}]},
     "conversations[1]: two human messages in a row"),
    ({"id": "open", "conversations": turns("a", "b", "c")},
     "the last human message has no gpt answer"),
    ({"id": "who", "conversations": [{"from": "bing", "value": "a"}]},
     "conversations[0].from is 'bing'; expected human or gpt (or system)"),
    ({"id": "lastsys", "conversations": [*turns("a", "b"), {"from": "system", "value": "s"}]},
     "conversations[2]: a system message after the conversation started"),
    ({"id": "imgtype", "image": {"path": "a.jpg"}, "conversations": turns("a", "b")},
     "'image' must be a path or a list of paths, got an object"),
    ({"id": "vid", "video": "v.mp4", "conversations": turns("<video>", "b")},
     "video records are not supported"),
    ({"id": "noconv"}, "no 'conversations' list"),
    (42, "a record must be a JSON object, got a number"),
]  # fmt: skip


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    image(folder / "imgs" / "a.jpg")
    image(folder / "imgs" / "b.png", (20, 50), "green", "PNG")
    image(folder / "imgs" / "sub" / "c.jpg", color="blue")
    return write_json_list(folder / "mydata_val.json", GOOD + [record for record, _ in BAD])


def test_json_list_converts_good_records_exactly(src, tmp_path):
    out = tmp_path / "out"
    manifest = convert("llava", src=src, out_dir=out, workers=1, progress=False)
    assert manifest["splits"] == {
        "val": {"file": "llava_val.jsonl", "samples": 4, "skipped": len(BAD)}
    }
    assert read_lines(out / "llava_val.jsonl") == [
        {
            "id": "val-0000000000",
            "source": "llava",
            "conversations": [
                {"images": ["imgs/a.jpg"], "user": "<|image_1|>\nWhat is it?", "assistant": "Red."}
            ],
            "meta": {"id": "one", "origin": "mydata_val.json:2"},
        },
        {
            "id": "val-0000000001",
            "source": "llava",
            "conversations": [
                {
                    "images": ["imgs/a.jpg", "imgs/b.png"],
                    "user": "<|image_1|>\nCompare with <|image_2|>.",
                    "assistant": "Same.",
                },
                {"images": ["imgs/sub/c.jpg"], "user": "And <|image_1|>?", "assistant": "Blue."},
            ],
            "meta": {"id": "multi", "origin": "mydata_val.json:3"},
        },
        {
            "id": "val-0000000002",
            "source": "llava",
            "conversations": [
                {
                    "images": ["imgs/a.jpg", "imgs/b.png"],
                    "user": "Which is wider?",
                    "assistant": "The first.",
                },
                {"images": [], "user": "Sure?", "assistant": "Yes."},
            ],
            "meta": {"id": 7, "origin": "mydata_val.json:4"},
        },
        {
            "id": "val-0000000003",
            "source": "llava",
            "conversations": [{"images": [], "user": "2+2?", "assistant": "4"}],
            "meta": {"id": "text", "origin": "mydata_val.json:5", "system": "Be brief."},
        },
    ]
    assert (out / "images/imgs/a.jpg").read_bytes() == (src.parent / "imgs/a.jpg").read_bytes()
    report = validate([out / "llava_val.jsonl"], decode=True)
    assert report.errors == [] and report.samples == 4


def test_every_bad_record_is_a_skip_with_line_id_and_reason(src, tmp_path):
    out = tmp_path / "out"
    convert("llava", src=src, out_dir=out, workers=1, progress=False)
    skipped = read_lines(out / "skipped.jsonl")
    assert len(skipped) == len(BAD)
    for line, (entry, (record, reason)) in enumerate(zip(skipped, BAD, strict=True), start=6):
        where = f"mydata_val.json:{line}"
        expected = f"{where} (id {record['id']})" if isinstance(record, dict) else where
        assert entry["origin"] == expected
        assert entry["split"] == "val"
        assert reason in entry["reason"], entry


def test_jsonl_with_options_and_a_broken_line(tmp_path):
    pictures = tmp_path / "pictures"
    image(pictures / "x.png", fmt="PNG")
    src = tmp_path / "data" / "chat.jsonl"
    src.parent.mkdir()
    src.write_text(
        json.dumps({"id": "a", "image": "x.png", "conversations": turns("Hi <image>", "Hello")})
        + "\n\n{not json\n"
        + json.dumps({"id": "b", "conversations": turns("No image", "Fine")})
        + "\n"
    )
    out = tmp_path / "out"
    manifest = convert(
        "llava",
        src=src,
        out_dir=out,
        workers=2,
        progress=False,
        image_folder=pictures,
        split="dev",
        name="mine",
    )
    assert manifest["splits"] == {"dev": {"file": "mine_dev.jsonl", "samples": 2, "skipped": 1}}
    lines = read_lines(out / "mine_dev.jsonl")
    assert [line["conversations"][0]["user"] for line in lines] == ["Hi <|image_1|>", "No image"]
    assert lines[0]["conversations"][0]["images"] == ["x.png"]
    assert [line["meta"]["origin"] for line in lines] == ["chat.jsonl:1", "chat.jsonl:4"]
    (skip,) = read_lines(out / "skipped.jsonl")
    assert skip["origin"] == "chat.jsonl:3" and skip["reason"].startswith("invalid JSON")
    assert validate([out / "mine_dev.jsonl"], decode=True).errors == []


def test_folder_of_files_splits_by_name_and_images_outside_go_to_external(tmp_path):
    outside = image(tmp_path / "elsewhere" / "far.jpg")
    folder = tmp_path / "raw"
    image(folder / "near.jpg")
    record = {"image": ["near.jpg", str(outside)], "conversations": turns("<image><image>", "2")}
    write_json_list(folder / "set_train.json", [record])
    (folder / "set_test.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "notes.txt").write_text("not data")
    out = tmp_path / "out"
    manifest = convert("llava", src=folder, out_dir=out, workers=1, progress=False)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {"test": 1, "train": 1}
    (sample,) = read_lines(out / "llava_train.jsonl")
    external = "external/" + str(outside).lstrip("/")
    assert sample["conversations"][0]["images"] == ["near.jpg", external]
    assert sample["meta"] == {"origin": "set_train.json:2"}
    files = [out / "llava_train.jsonl", out / "llava_test.jsonl"]
    assert validate(files, decode=True).errors == []


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("llava_train.json", "train"),
        ("llava-val.jsonl", "val"),
        ("test.json", "test"),
        ("my_data_validation.json", "validation"),
        ("llava_v1_5_mix665k.json", "train"),
        ("contest.json", "train"),
    ],
)
def test_split_from_file_name(name, split):
    assert split_from_name(Path(name)) == split


def test_pretty_printed_list_gives_each_record_its_line_and_survives_a_syntax_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(
        '[\n  {\n    "id": 1\n  },\n  {"id": 2},\n\n  {"id": 3,\n   "oops": }\n, {"id": 4}]'
    )
    records = list(read_records(path))
    assert [(r.line, r.value) for r in records[:2]] == [(2, {"id": 1}), (5, {"id": 2})]
    assert records[2].line == 8 and "the rest of the file cannot be read" in records[2].problem
    assert len(records) == 3
    path.write_text('\ufeff[{"id": 1},\n{"id": 2},\n]')  # BOM and a trailing comma
    assert [(r.line, r.value) for r in read_records(path)] == [(1, {"id": 1}), (2, {"id": 2})]
    path.write_text('[{"id": 1},\n{"id": 2}')
    assert next(read_records(path)).value == {"id": 1}
    assert "not closed" in list(read_records(path))[-1].problem


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_exit_codes(src, tmp_path):
    skipped = run("convert", "llava", "--src", src, "--out_dir", tmp_path / "a", "--no-progress")
    assert skipped.exit_code == 1
    assert "val: 4 samples" in skipped.output
    clean_src = write_json_list(tmp_path / "clean" / "d.json", [GOOD[3]])
    clean = run("convert", "llava", "--src", clean_src, "--out-dir", tmp_path / "b", "--split",
                "val", "--name", "cl", "--workers", "1", "--no-progress")  # fmt: skip
    assert clean.exit_code == 0, clean.output
    assert (tmp_path / "b" / "cl_val.jsonl").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("just text\n", "not JSON"),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}\n',
            "use 'phi3v-data convert messages'",
        ),
        ('[{"id": 1, "conversations": [}]', "invalid JSON at line 1"),
        ("{broken\n", "invalid JSON"),
    ],
)
def test_cli_bad_src_is_a_usage_error(tmp_path, content, message):
    src = tmp_path / "in.json"
    if content is not None:
        src.write_text(content)
    result = run("convert", "llava", "--src", src, "--out_dir", tmp_path / "o")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_cli_bad_folder_split_and_image_folder_are_usage_errors(src, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("convert", "llava", "--src", empty, "--out_dir", tmp_path / "o")
    assert result.exit_code == 2 and "no .json or .jsonl file" in result.output
    result = run("convert", "llava", "--src", src, "--out_dir", tmp_path / "o", "--split", "../x")
    assert result.exit_code == 2 and "--split" in result.output
    result = run(
        "convert", "llava", "--src", src, "--out_dir", tmp_path / "o", "--image-folder", empty / "n"
    )
    assert result.exit_code == 2 and "is not a folder" in result.output
