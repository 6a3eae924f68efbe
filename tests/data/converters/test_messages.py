"""``messages``: OpenAI-style chat JSONL in; images placed where they appear; no network."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data import validate
from phi3v_data.cli import main
from phi3v_data.engine import convert


def image(path: Path, size: tuple[int, int] = (40, 30), color: str = "red", fmt: str = "JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def png_data_uri(color: str = "blue") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def url(value: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": value}}


def chat(*contents: Any, system: str | None = None, **extra: Any) -> dict[str, Any]:
    """A record of alternating user/assistant messages, with an optional system message."""
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return {**extra, "messages": messages}


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


DATA_URI = png_data_uri()


def good_records(raw: Path) -> list[dict[str, Any]]:
    absolute = "file://" + str(raw / "imgs" / "b.png")
    return [
        chat("What is 2+2?", "4", system="Answer with a number.", id="text"),
        chat([url("imgs/a.jpg"), text("What colour?")], "Red.", id="leading"),
        chat(
            [text("Compare"), url(absolute), url(DATA_URI), text("which is"), text("larger?")],
            [text("The "), text("second.")],
            id="between",
        ),
        chat(
            [text("Look:"), {"type": "image", "image": "imgs/a.jpg"}],
            "A red square.",
            "And now?",
            "Still red.",
            id=5,
        ),
        chat([url(DATA_URI)], "Blue.", id="only-image"),
    ]


BAD = [
    (chat([url("http://example.com/a.jpg"), text("x")], "y", id="http"),
     "messages[0]: remote image URL 'http://example.com/a.jpg' is not downloaded"),
    (chat([url("https://example.com/a.jpg")], "y", id="https"), "remote image URL"),
    (chat([url("ftp://example.com/a.jpg")], "y", id="ftp"), "unsupported image URL"),
    (chat([url("data:text/plain;base64,aGk=")], "y", id="datatext"),
     "only base64 data:image/...;base64, URIs"),
    (chat([url("data:image/png;base64,***")], "y", id="badb64"), "not valid base64"),
    (chat([url("imgs/missing.jpg")], "y", id="gone"), "image file not found"),
    (chat([url("file://otherhost/a.jpg")], "y", id="host"), "names another host"),
    ({"id": "first", "messages": [{"role": "assistant", "content": "x"}]},
     "messages[0]: assistant message first"),
    (chat("a", "b", "c", id="open"), "the last user message has no assistant answer"),
    ({"id": "two", "messages": [{"role": "user", "content": "a"},
                                {"role": "user", "content": "b"}]},
     "messages[1]: two user messages in a row"),
    (chat([text("a")], [url("imgs/a.jpg")], id="answerimage"),
     "messages[1]: an image in the assistant message"),
    (chat([{"type": "text", "text": 3}], "b", id="number"),
     "messages[0].content[0]: the text must be a string, got a number"),
    (chat([{"type": "audio", "audio": "x.wav"}], "b", id="audio"), "unsupported part type 'audio'"),
    (chat(7, "b", id="content"), "messages[0].content must be a string or a list of parts"),
    ({"id": "tool", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role is 'tool'"),
    (chat("<image> hi", "b", id="llavatag"), "LLaVA-style <image> tag"),
    (chat("a", "b", id="toplevel", images=["imgs/a.jpg"]), "top-level 'images' is not read"),
    ({"id": "nomessages", "messages": []}, "'messages' must be a non-empty list"),
    (["not", "an", "object"], "a record must be a JSON object, got a list"),
]  # fmt: skip


@pytest.fixture
def src(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    image(raw / "imgs" / "a.jpg")
    image(raw / "imgs" / "b.png", (30, 60), "green", "PNG")
    return write_jsonl(raw / "chat_test.jsonl", good_records(raw) + [r for r, _ in BAD])


def test_converts_good_records_exactly(src, tmp_path):
    out = tmp_path / "out"
    manifest = convert("messages", src=src, out_dir=out, workers=1, progress=False)
    assert manifest["splits"] == {
        "test": {"file": "messages_test.jsonl", "samples": 5, "skipped": len(BAD)}
    }
    data_png = "data/" + _sha256(DATA_URI)[:32] + ".png"
    assert read_lines(out / "messages_test.jsonl") == [
        {
            "id": "test-0000000000",
            "source": "messages",
            "conversations": [{"images": [], "user": "What is 2+2?", "assistant": "4"}],
            "meta": {
                "id": "text",
                "origin": "chat_test.jsonl:1",
                "system": "Answer with a number.",
            },
        },
        {
            "id": "test-0000000001",
            "source": "messages",
            "conversations": [
                {"images": ["imgs/a.jpg"], "user": "What colour?", "assistant": "Red."}
            ],
            "meta": {"id": "leading", "origin": "chat_test.jsonl:2"},
        },
        {
            "id": "test-0000000002",
            "source": "messages",
            "conversations": [
                {
                    "images": ["imgs/b.png", data_png],
                    "user": "Compare\n<|image_1|><|image_2|>\nwhich is\nlarger?",
                    "assistant": "The \nsecond.",
                }
            ],
            "meta": {"id": "between", "origin": "chat_test.jsonl:3"},
        },
        {
            "id": "test-0000000003",
            "source": "messages",
            "conversations": [
                {
                    "images": ["imgs/a.jpg"],
                    "user": "Look:\n<|image_1|>",
                    "assistant": "A red square.",
                },
                {"images": [], "user": "And now?", "assistant": "Still red."},
            ],
            "meta": {"id": 5, "origin": "chat_test.jsonl:4"},
        },
        {
            "id": "test-0000000004",
            "source": "messages",
            "conversations": [{"images": [data_png], "user": "", "assistant": "Blue."}],
            "meta": {"id": "only-image", "origin": "chat_test.jsonl:5"},
        },
    ]
    stored = out / "images" / data_png
    assert stored.read_bytes() == base64.b64decode(DATA_URI.partition(",")[2])
    assert sorted(p.name for p in (out / "images" / "data").iterdir()) == [stored.name]
    report = validate([out / "messages_test.jsonl"], decode=True)
    assert report.errors == [] and report.samples == 5


def _sha256(uri: str) -> str:
    return hashlib.sha256(base64.b64decode(uri.partition(",")[2])).hexdigest()


def test_every_bad_record_is_a_skip_with_line_id_and_reason(src, tmp_path):
    out = tmp_path / "out"
    convert("messages", src=src, out_dir=out, workers=2, progress=False)
    skipped = read_lines(out / "skipped.jsonl")
    assert len(skipped) == len(BAD)
    first = len(good_records(src.parent)) + 1
    for line, (entry, (record, reason)) in enumerate(zip(skipped, BAD, strict=True), start=first):
        where = f"chat_test.jsonl:{line}"
        expected = f"{where} (id {record['id']})" if isinstance(record, dict) else where
        assert entry["origin"] == expected
        assert entry["split"] == "test"
        assert reason in entry["reason"], entry


def test_folder_options_and_broken_lines(tmp_path):
    pictures = tmp_path / "pictures"
    image(pictures / "p.jpg")
    folder = tmp_path / "raw"
    write_jsonl(folder / "a_train.jsonl", [chat([url("p.jpg"), text("Hi")], "Hello", id="x")])
    (folder / "b_val.jsonl").write_bytes(
        b'{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}'
        b"\n{oops\nbin\x00ary\n"
    )
    (folder / "ignored.json").write_text("[]")
    out = tmp_path / "out"
    manifest = convert(
        "messages", src=folder, out_dir=out, workers=1, progress=False, image_folder=pictures
    )
    assert manifest["splits"] == {
        "train": {"file": "messages_train.jsonl", "samples": 1, "skipped": 0},
        "val": {"file": "messages_val.jsonl", "samples": 1, "skipped": 2},
    }
    assert [s["origin"] for s in read_lines(out / "skipped.jsonl")] == [
        "b_val.jsonl:2",
        "b_val.jsonl:3",
    ]
    (first,) = read_lines(out / "messages_train.jsonl")
    assert first["conversations"][0]["images"] == ["p.jpg"]
    files = [out / "messages_train.jsonl", out / "messages_val.jsonl"]
    assert validate(files, decode=True).errors == []
    again = tmp_path / "again"
    manifest = convert(
        "messages",
        src=folder / "a_train.jsonl",
        out_dir=again,
        workers=1,
        progress=False,
        image_folder=pictures,
        split="dev",
        name="mine",
    )
    assert list(manifest["splits"]) == ["dev"]
    assert (again / "mine_dev.jsonl").is_file()


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_exit_codes(src, tmp_path):
    skipped = run("convert", "messages", "--src", src, "--out_dir", tmp_path / "a", "--no-progress")
    assert skipped.exit_code == 1
    assert "test: 5 samples" in skipped.output
    clean_src = write_jsonl(tmp_path / "clean" / "c.jsonl", [chat("hi", "hello")])
    clean = run("convert", "messages", "--src", clean_src, "--out-dir", tmp_path / "b",
                "--workers", "1", "--no-progress")  # fmt: skip
    assert clean.exit_code == 0, clean.output
    assert read_lines(tmp_path / "b" / "messages_train.jsonl")[0]["conversations"] == [
        {"images": [], "user": "hi", "assistant": "hello"}
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ('[{"messages": []}]\n', "not a messages record"),
        ('{"id": 1, "conversations": []}\n', "use 'phi3v-data convert llava'"),
        ("{oops\n", "invalid JSON"),
    ],
)
def test_cli_bad_src_is_a_usage_error(tmp_path, content, message):
    src = tmp_path / "in.jsonl"
    if content is not None:
        src.write_text(content)
    result = run("convert", "messages", "--src", src, "--out_dir", tmp_path / "o")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_cli_folder_without_jsonl_is_a_usage_error(tmp_path):
    (tmp_path / "in").mkdir()
    result = run("convert", "messages", "--src", tmp_path / "in", "--out_dir", tmp_path / "o")
    assert result.exit_code == 2 and "no .jsonl file" in result.output
