"""``preview``: one self-contained HTML page; escaped text; placeholders; reproducible picks."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.preview import write_preview
from tests.conftest import sample

THUMB = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')
# Anything a browser would fetch: a URL (absolute or protocol-relative) in src/href/url().
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//|url\(|@import""", re.I)


def write_lines(path: Path, lines: list[dict | bytes]) -> Path:
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (600, 300), "red").save(images / "wide.jpg")
    Image.new("RGBA", (50, 80), (0, 0, 255, 128)).save(images / "tall.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return write_lines(
        tmp_path / "set_train.jsonl",
        [
            sample("s-one", images=["wide.jpg", "tall.png"], user="Compare them."),
            sample("s-<two>", images=["gone.jpg"], user="<script>alert('x')</script> & more"),
            {"id": "llava-like", "image": "wide.jpg", "conversations": []},
            sample("s-three", images=[], user="Text only", meta={"answers": ["a <b>", "c"]}),
            b"{not json",
            sample("s-four", images=["broken.jpg"], assistant=""),
        ],
    )


def test_page_shows_samples_thumbnails_placeholders_and_invalid_lines(data, tmp_path):
    out = write_preview(data, tmp_path / "p" / "preview.html", thumb=64)
    assert out == tmp_path / "p" / "preview.html"
    page = out.read_text()
    for shown in ("s-one", "s-&lt;two&gt;", "s-three", "s-four"):
        assert f"<header>{shown}<span>" in page
    thumbs = [Image.open(io.BytesIO(base64.b64decode(t))) for t in THUMB.findall(page)]
    assert [(t.format, t.size) for t in thumbs] == [("JPEG", (64, 32)), ("JPEG", (40, 64))]
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "&lt;|image_1|&gt;&lt;|image_2|&gt;\nCompare them." in page  # as the trainer sees it
    assert re.search(r'class="missing"[^>]*>image unavailable: image file not found: \S+gone', page)
    assert re.search(r'class="missing"[^>]*>image unavailable: image cannot be decoded', page)
    assert "&quot;a &lt;b&gt;&quot;" in page  # meta, escaped
    assert "(no answer)" in page
    assert "2 invalid line(s)" in page
    assert "<li>line 3: " in page and "unknown key &#x27;image&#x27; (LLaVA format?" in page
    assert "<li>line 5: invalid JSON" in page
    assert "4 of 4 valid sample(s), the first 20" in page
    assert not REMOTE.search(page)
    assert "default-src 'none'" in page  # the browser itself refuses any fetch or script
    assert [p.name for p in out.parent.iterdir()] == ["preview.html"]  # no temp file left


def many(tmp_path: Path, count: int = 30) -> Path:
    return write_lines(
        tmp_path / "many.jsonl", [sample(f"id{n:02d}", images=[]) for n in range(count)]
    )


def shown_ids(path: Path) -> list[str]:
    return re.findall(r"<header>(id\d\d)<span>", path.read_text())


def test_first_n_and_reproducible_random_picks(tmp_path):
    source = many(tmp_path)
    first = write_preview(source, tmp_path / "first.html", n=5)
    assert shown_ids(first) == ["id00", "id01", "id02", "id03", "id04"]
    picks = [
        shown_ids(write_preview(source, tmp_path / f"r{i}.html", n=5, random=True, seed=seed))
        for i, seed in enumerate((7, 7, 8))
    ]
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]
    assert picks[0] == sorted(picks[0]) and len(set(picks[0])) == 5
    assert picks[0] != shown_ids(first)
    everything = write_preview(source, tmp_path / "all.html", n=100, random=True, seed=1)
    assert shown_ids(everything) == [f"id{n:02d}" for n in range(30)]


def test_images_root_option_and_bad_arguments(data, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    page = write_preview(data, tmp_path / "x.html", images_root=elsewhere).read_text()
    assert "data:image/jpeg;base64" not in page
    assert page.count('class="missing"') == 4
    with pytest.raises(ValueError):
        write_preview(data, tmp_path / "y.html", n=0)


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli(tmp_path):
    source = many(tmp_path)
    out = tmp_path / "cli.html"
    result = run("preview", source, "--out", out, "-n", "3", "--random", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    api = write_preview(source, tmp_path / "api.html", n=3, random=True, seed=3)
    assert shown_ids(out) == shown_ids(api) and len(shown_ids(out)) == 3
    thumb = run("preview", source, "--out", out, "--thumb", "8")
    assert thumb.exit_code == 2
    missing = run("preview", tmp_path / "nope.jsonl", "--out", out)
    assert missing.exit_code == 2
    no_out = run("preview", source)
    assert no_out.exit_code == 2 and "--out" in no_out.output
