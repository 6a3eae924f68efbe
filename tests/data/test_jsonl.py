"""JSONL reading and writing: messy files in, line numbers out, nothing half-written."""

from __future__ import annotations

import os

import orjson
import pytest

from phi3v_data.jsonl import JsonlError, Line, LineProblem, iter_lines, read_jsonl, write_jsonl
from phi3v_data.schema import Sample
from tests.conftest import sample


def lines_of(path, **kwargs):
    return [
        (item.number, item.data if isinstance(item, Line) else item.message)
        for item in iter_lines(path, **kwargs)
    ]


def test_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a":1}\r\n\r\n   \n{"a":2}\r\n{"a":3}')
    assert lines_of(path) == [(1, b'{"a":1}'), (4, b'{"a":2}'), (5, b'{"a":3}')]


def test_nul_bytes_are_a_line_problem(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\x00\x00\xff\xfe\n{"a":2}\n')
    items = list(iter_lines(path))
    assert isinstance(items[1], LineProblem) and items[1].number == 2
    assert "NUL" in items[1].message
    assert isinstance(items[2], Line) and items[2].number == 3


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_long_line_is_skipped_with_bounded_memory(tmp_path, monkeypatch, block):
    monkeypatch.setattr("phi3v_data.jsonl.BLOCK_SIZE", block)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n' + b"x" * 5000 + b'\n{"a":2}\n' + b"y" * 3000)
    found = lines_of(path, max_line_bytes=1000)
    assert found[0] == (1, b'{"a":1}')
    assert found[1][0] == 2 and "longer than 1,000 bytes" in found[1][1]
    assert found[2] == (3, b'{"a":2}')
    assert found[3][0] == 4 and "longer than" in found[3][1]


def test_line_numbers_survive_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("phi3v_data.jsonl.BLOCK_SIZE", 5)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(1, 40)))
    assert [(n, orjson.loads(data)["n"]) for n, data in lines_of(path)] == [
        (n, n) for n in range(1, 40)
    ]


def test_read_jsonl_stops_at_the_first_bad_line_with_its_number(tmp_path):
    path = tmp_path / "x_train.jsonl"
    path.write_bytes(
        orjson.dumps(sample("a")) + b"\n" + orjson.dumps(sample("b", images="x.jpg")) + b"\n"
    )
    reader = read_jsonl(path)
    assert next(reader).id == "a"
    with pytest.raises(JsonlError) as caught:
        next(reader)
    assert caught.value.line == 2
    assert str(caught.value).startswith(f"{path}:2: conversations[0].images: images must be a list")


def test_read_jsonl_without_validation_reports_bad_json(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    reader = read_jsonl(path, validate=False)
    assert next(reader) == {"a": 1}
    with pytest.raises(JsonlError, match=r":2: invalid JSON"):
        next(reader)


def test_write_then_read_round_trip(tmp_path):
    samples = [Sample.model_validate(sample(f"s{i}", meta={"i": i})) for i in range(3)]
    samples.append(Sample.model_validate(sample("no-meta")))
    path = tmp_path / "out" / "t_train.jsonl"
    assert write_jsonl(path, samples) == 4
    assert list(read_jsonl(path)) == samples
    assert b'"meta"' not in path.read_bytes().splitlines()[-1]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "t_train.jsonl"
    write_jsonl(path, [sample("old")])
    before = path.read_bytes()

    def broken():
        yield sample("new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t_train.jsonl"]
