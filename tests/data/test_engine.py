"""The conversion engine: ids, skips, manifest, refusal, resume after kill -9, plugins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data import validate
from phi3v_data.cli import main
from phi3v_data.engine import WORK_DIR, ConvertError, convert

# A plugin converter: N text items; build() leaves a marker file per call and sleeps, so a
# test can kill the run half-way and count what was built twice.
PLUGIN = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    from pydantic import Field
    from phi3v_data.converter import Built, Converter, ConverterOptions, Item, Skip, SkipItem
    from phi3v_data.registry import register
    from phi3v_data.schema import Turn

    class CountingOptions(ConverterOptions):
        count: int = Field(20, description="How many items.")
        delay: float = Field(0.0, description="Seconds per item.")

    @register
    class Counting(Converter):
        name = "counting"
        summary = "numbers, for tests"
        Options = CountingOptions
        requires_src = False

        def plan(self):
            for n in range(self.options.count):
                if n == 3:
                    yield Skip("train", f"row {n}", "malformed row")
                else:
                    yield Item("train" if n % 4 else "val", f"row {n}", n)

        def build(self, item, media):
            n = item.payload
            marker = Path(os.environ["MARKERS"]) / f"{n}.{os.getpid()}.{time.monotonic_ns()}"
            marker.touch()
            time.sleep(self.options.delay)
            if n == 5:
                raise SkipItem("five is unlucky")
            return Built([Turn(user=f"What is {n} + 1?", assistant=str(n + 1))], {"n": n})
    """
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    path = tmp_path / "counting_plugin.py"
    path.write_text(PLUGIN)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("MARKERS", str(markers))
    from phi3v_data.registry import load_plugin

    load_plugin(path)
    return path, markers


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ids_splits_skips_and_manifest(plugin, tmp_path):
    out = tmp_path / "out"
    manifest = convert("counting", out_dir=out, workers=1, progress=False, count=9)
    assert manifest["splits"] == {
        "val": {"file": "counting_val.jsonl", "samples": 3, "skipped": 0},
        "train": {"file": "counting_train.jsonl", "samples": 4, "skipped": 2},
    }
    assert manifest["skipped"] == 2 and manifest["samples"] == 7
    train = read_lines(out / "counting_train.jsonl")
    assert [s["id"] for s in train] == [
        "train-0000000001",
        "train-0000000002",
        "train-0000000006",
        "train-0000000007",
    ]
    assert train[0] == {
        "id": "train-0000000001",
        "source": "counting",
        "conversations": [{"images": [], "user": "What is 1 + 1?", "assistant": "2"}],
        "meta": {"n": 1},
    }
    assert read_lines(out / "skipped.jsonl") == [
        {"split": "train", "origin": "row 3", "reason": "malformed row"},
        {"split": "train", "origin": "row 5", "reason": "five is unlucky"},
    ]
    assert not (out / WORK_DIR).exists()
    files = [out / "counting_train.jsonl", out / "counting_val.jsonl"]
    assert validate(files, check_images=False).ok


def test_output_is_identical_for_any_number_of_workers(plugin, tmp_path):
    convert("counting", out_dir=tmp_path / "one", workers=1, progress=False)
    convert("counting", out_dir=tmp_path / "two", workers=2, progress=False)
    for name in ("counting_train.jsonl", "counting_val.jsonl", "skipped.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_finished_output_is_left_alone_and_other_options_refused(plugin, tmp_path):
    out = tmp_path / "out"
    convert("counting", out_dir=out, workers=1, progress=False)
    before = (out / "counting_train.jsonl").stat().st_mtime_ns
    again = convert("counting", out_dir=out, workers=1, progress=False)
    assert again["up_to_date"] is True
    assert (out / "counting_train.jsonl").stat().st_mtime_ns == before
    with pytest.raises(ConvertError, match=r"--count \(20 -> 12\).*--overwrite"):
        convert("counting", out_dir=out, workers=1, progress=False, count=12)
    replaced = convert("counting", out_dir=out, workers=1, progress=False, count=12, overwrite=True)
    assert replaced["samples"] == 10


def test_unknown_and_bad_options_are_refused(plugin, tmp_path):
    with pytest.raises(ConvertError, match="--colour"):
        convert("counting", out_dir=tmp_path / "o", colour="red")
    with pytest.raises(ConvertError, match="--count"):
        convert("counting", out_dir=tmp_path / "o", count="many")


def test_resume_after_kill_9_redoes_nothing_and_loses_nothing(plugin, tmp_path):
    path, markers = plugin
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "phi3v_data", "convert", "--plugin", str(path), "counting",
        "--out_dir", str(out), "--workers", "2", "--count", "40", "--delay", "0.1",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "MARKERS": str(markers)}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    journal = out / WORK_DIR / "journal.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {json.loads(line)["i"] for line in journal.read_bytes().splitlines()}
    assert 12 <= len(done_before) < 40
    assert not (out / "manifest.json").exists()
    with open(journal, "ab") as file:  # a torn last line, as a kill mid-write leaves it
        file.write(b'{"i": 39, "split": "tr')
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert finished.returncode == 1, finished.stderr  # items 3 and 5 are skipped
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"] is True and manifest["skipped"] == 2
    built = [int(m.name.split(".")[0]) for m in markers.iterdir()]
    rebuilt = {n for n in built if built.count(n) > 1}
    assert not (rebuilt & (done_before - {3})), "finished items were built again"
    ids = [s["id"] for f in ("counting_train.jsonl", "counting_val.jsonl")
           for s in read_lines(out / f)]  # fmt: skip
    assert len(ids) == len(set(ids)) == 38
    assert sorted(int(i.split("-")[1]) for i in ids) == [n for n in range(40) if n not in (3, 5)]


def test_cli_exit_codes_and_list(plugin, tmp_path):
    path, _ = plugin
    runner = CliRunner()
    listed = runner.invoke(main, ["convert", "--plugin", str(path), "--list"])
    assert listed.exit_code == 0
    assert "counting" in listed.output and "imagefolder" in listed.output
    args = ["convert", "counting", "--plugin", str(path), "--out-dir", str(tmp_path / "o")]
    result = runner.invoke(main, [*args, "--workers", "1", "--no-progress"])
    assert result.exit_code == 1
    assert "train: 13 samples" in result.output
    clean = runner.invoke(main, [*args[:-1], str(tmp_path / "c"), "--count", "3", "--no-progress"])
    assert clean.exit_code == 0, clean.output
    unknown = runner.invoke(main, ["convert", "nosuch", "--out_dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown converter 'nosuch'" in unknown.output
    missing = runner.invoke(main, ["convert", "--plugin", str(tmp_path / "none.py"), "--list"])
    assert missing.exit_code == 2 and "plugin file not found" in missing.output


def test_imagefolder_copies_reencodes_and_skips(tmp_path):
    src = tmp_path / "src"
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (src / split / label).mkdir(parents=True)
            Image.new("RGB", (32, 24), "red").save(src / split / label / "a.jpg", quality=80)
    Image.new("CMYK", (16, 16)).save(src / "train" / "cat" / "cmyk.jpg")
    (src / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jpeg = src / "val" / "dog" / "a.jpg"
    jpeg.rename(jpeg.with_suffix(".png"))  # JPEG bytes under a .png name
    out = tmp_path / "out"
    manifest = convert("imagefolder", src=src, out_dir=out, workers=1, progress=False)
    assert manifest["splits"]["train"]["samples"] == 3
    assert manifest["reencoded"]["count"] == 1
    assert manifest["reencoded"]["files"][0][0] == "train/cat/cmyk.jpg"
    assert read_lines(out / "skipped.jsonl")[0]["origin"] == "train/dog/broken.png"
    assert (out / "images/val/dog/a.jpg").read_bytes() == (src / "val/dog/a.png").read_bytes()
    assert Image.open(out / "images/train/cat/cmyk.jpg").mode == "RGB"
    val = read_lines(out / "imagefolder_val.jsonl")
    assert val[0]["conversations"][0]["user"] == (
        "Classify the image into one of the following classes: cat, dog."
    )
    files = sorted(out.glob("imagefolder_*.jsonl"))
    assert validate(files, decode=True).ok


def test_link_hard_links_instead_of_copying(tmp_path):
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "x.png")
    convert("imagefolder", src=tmp_path / "src", out_dir=tmp_path / "o", link=True, workers=1)
    assert os.path.samefile(src / "x.png", tmp_path / "o/images/train/cat/x.png")


def test_unrecognised_src_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["convert", "imagefolder", "--src", str(tmp_path / "empty"), "--out_dir", "o"]
    )
    assert result.exit_code == 2
    assert "expected class folders of images" in result.output
