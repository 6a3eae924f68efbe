"""phi3v-data validate / stats / schema on the command line: exit codes, JSON, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from phi3v_data.cli import main
from tests.conftest import sample


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_clean_file_exits_0(layout):
    result = run("validate", layout([sample("a")]))
    assert result.exit_code == 0
    assert "1 samples, 1 without errors: 0 error(s)" in result.output


def test_problems_exit_1_and_name_line_id_field(layout):
    result = run("validate", layout([sample("a"), sample("b", images=["nope.jpg"])]))
    assert result.exit_code == 1
    assert "data_train.jsonl:2 [id b] conversations[0].images[0]: image file not found" in (
        result.output
    )


def test_json_output_is_exactly_one_document(layout):
    path = layout([sample("a"), b"{oops", sample("c", user="<image>")])
    result = run("validate", path, "--format", "json", "--num-crops", "4")
    assert result.exit_code == 1
    document = json.loads(result.output)  # raises if anything else is printed
    assert set(document) >= {"files", "samples", "errors", "warnings"}
    assert document["samples"] == 3
    assert [(e["line"], e["id"], e["field"]) for e in document["errors"]] == [
        (2, None, ""),
        (3, "c", "conversations[0].user"),
    ]
    assert all(set(e) >= {"line", "id", "field", "message"} for e in document["errors"])
    assert document["tokens"]["samples"][0]["id"] == "a"


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "does-not-exist.jsonl"],
        ["validate"],
        ["validate", "{path}", "--max-length", "100"],
        ["validate", "{path}", "--num-crops", "0"],
        ["validate", "{path}", "--no-images", "--decode"],
        ["validate", "{path}", "--format", "xml"],
        ["validate", "{path}", "--num-crops", "4", "--tokenizer", "{dir}"],
        ["stats", "nope.jsonl"],
    ],
)
def test_usage_errors_exit_2(layout, tmp_path, args):
    path = layout([sample("a")])
    filled = [a.format(path=path, dir=tmp_path) for a in args]
    result = CliRunner().invoke(main, filled)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content",
    [
        b"",
        os.urandom(4096),
        b"\xef\xbb\xbf",
        b"null\n" * 3,
        b'{"id": "\xff\xfe"}\n',
        b'{"conversations": [{"images": [null, 3, {"a": 1}], "user": 1}]}\n',
        b"[" * 10000 + b"\n",
        b'"just a string"\n',
        b"\n\n\r\n",
    ],
)
def test_no_traceback_on_any_input(tmp_path, content):
    path = tmp_path / "bad_train.jsonl"
    path.write_bytes(content)
    for fmt in ("text", "json"):
        result = CliRunner().invoke(
            main, ["validate", str(path), "--format", fmt, "--num-crops", "4"]
        )
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert result.exit_code in (0, 1)
    result = CliRunner().invoke(main, ["stats", str(path), "--format", "json"])
    assert result.exit_code == 0 and result.exception is None


def test_stats_json(layout):
    path = layout(
        [sample("a"), sample("b", images=["a.jpg", "b.png"]), sample("c", images=[]), b"{bad"]
    )
    result = run("stats", path, "--format", "json", "--num-crops", "4")
    assert result.exit_code == 0
    document = json.loads(result.output)
    assert document["samples"] == 3 and document["invalid_lines"] == 1
    assert document["splits"] == {"train": 3} and document["sources"] == {"test": 3}
    assert document["images_per_sample"]["max"] == 2
    assert document["images"]["distinct"] == 2
    assert document["image_tokens_per_image"]["max"] == 757


def test_stats_text(layout):
    result = run("stats", layout([sample("a")]))
    assert result.exit_code == 0
    assert "1 samples in 1 file(s)" in result.output
    assert "image tokens per image (num_crops=4): min 757" in result.output


def test_schema_command(tmp_path):
    out = tmp_path / "s.json"
    assert run("schema", "--out", out).exit_code == 0
    assert json.loads(out.read_bytes())["title"] == "Sample"


def test_console_script_runs_without_torch(layout):
    """The installed entry point works, and the data side never imports torch."""
    path = layout([sample("a")])
    code = (
        "import sys; from phi3v_data.cli import main; "
        "sys.argv=['phi3v-data','validate',sys.argv[1]]; "
        "import atexit; "
        "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NOTORCH'))\n"
        "main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NOTORCH")


def test_json_on_huge_file_line_numbers(tmp_path):
    path = tmp_path / "big_train.jsonl"
    lines = [orjson.dumps(sample(f"s{i}", images=[])) for i in range(500)]
    lines[321] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    document = json.loads(run("validate", path, "--format", "json", "--no-images").output)
    assert [e["line"] for e in document["errors"]] == [322]
