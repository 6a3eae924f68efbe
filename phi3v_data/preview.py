"""``preview``: one self-contained HTML page showing samples of a jsonl file.

The page is for looking at data before training on it: thumbnails of each turn's images,
the user text as the trainer will see it (image tags included), the answer, and ``meta``.
It must open from disk anywhere, so everything is inline: thumbnails are JPEG ``data:``
URIs made with Pillow, styles are inline, and a Content-Security-Policy forbids any
network request or script. All text from the data is HTML-escaped.

Nothing in the file stops the page from being written: a line that is not a valid sample
is listed at the top with its number and the schema's message, and an image that is
missing or broken is shown as a placeholder with the reason.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import orjson
from PIL import Image
from pydantic import ValidationError

from phi3v_data.errors import describe_validation_error
from phi3v_data.jsonl import LineProblem, atomic_writer, iter_lines
from phi3v_data.layout import ImageResolver, images_root_for
from phi3v_data.media import ImageProblem, probe_image
from phi3v_data.prompt import user_content
from phi3v_data.schema import Sample, Turn

MAX_LISTED_INVALID = 200
JPEG_QUALITY = 85

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
.summary { color: #555; }
.invalid { background: #fff3f3; border: 1px solid #e0a0a0; padding: .5em 1em; }
.invalid li { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.sample { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 1em 0;
          padding: .6em 1em; }
.sample header { font-weight: 600; }
.sample header span { font-weight: normal; color: #777; margin-left: 1em; }
.turn { border-top: 1px solid #eee; padding: .4em 0; }
.role { font-size: .8em; text-transform: uppercase; color: #888; margin-top: .4em; }
.text { white-space: pre-wrap; margin: .2em 0; font-family: inherit; }
.assistant .text { color: #0b5394; }
.empty { color: #999; font-style: italic; }
.images { display: flex; flex-wrap: wrap; gap: .5em; }
figure { margin: 0; }
figure img { display: block; border: 1px solid #ccc; }
figcaption { font-size: .75em; color: #666; max-width: 20em; word-break: break-all; }
.missing { display: flex; align-items: center; justify-content: center; text-align: center;
           background: #fde8e8; color: #a00; border: 2px dashed #d88; font-size: .8em;
           padding: .5em; box-sizing: border-box; word-break: break-word; }
details pre { background: #f4f4f4; padding: .5em; overflow-x: auto; }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(slots=True)
class Selection:
    """The samples to show (with their line numbers) and what the scan found."""

    samples: list[tuple[int, Sample]] = field(default_factory=list)
    valid: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    invalid_count: int = 0


def write_preview(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n: int = 20,
    random: bool = False,
    seed: int = 0,
    images_root: str | os.PathLike[str] | None = None,
    thumb: int = 256,
) -> Path:
    """Write an HTML preview of ``n`` samples of the jsonl ``path`` to ``out``; return ``out``.

    The first ``n`` valid samples, or with ``random`` a uniform sample of ``n`` that depends
    only on ``seed`` and the file (shown in file order). Image paths are relative to
    ``images_root`` (default: ``images/`` beside the file); thumbnails fit in ``thumb``
    pixels. The file is written atomically.
    """
    if n < 1 or thumb < 1:
        raise ValueError("n and thumb must be at least 1")
    path = Path(path)
    root = Path(images_root) if images_root is not None else images_root_for(path)
    selection = select_samples(path, n, Random(seed) if random else None)
    how = f"a random {n} (seed {seed})" if random else f"the first {n}"
    page = _page(path, root, selection, how, _Thumbnails(root, thumb))
    with atomic_writer(out) as file:
        file.write(page.encode("utf-8"))
    return Path(out)


def select_samples(path: Path, n: int, rng: Random | None) -> Selection:
    """Scan the whole file once: keep ``n`` samples (the first, or a reservoir sample when
    ``rng`` is given, so memory stays bounded) and note every invalid line."""
    selection = Selection()
    for number, sample, problem in _read(path):
        if problem is not None:
            selection.invalid_count += 1
            if len(selection.invalid) < MAX_LISTED_INVALID:
                selection.invalid.append((number, problem))
            continue
        assert sample is not None
        selection.valid += 1
        if len(selection.samples) < n:
            selection.samples.append((number, sample))
        elif rng is not None:
            slot = rng.randrange(selection.valid)
            if slot < n:
                selection.samples[slot] = (number, sample)
    selection.samples.sort(key=lambda entry: entry[0])
    return selection


def _read(path: Path) -> Iterator[tuple[int, Sample | None, str | None]]:
    """(line number, sample, None) or (line number, None, why the line is not a sample)."""
    validate_json = Sample.__pydantic_validator__.validate_json
    for line in iter_lines(path):
        if isinstance(line, LineProblem):
            yield line.number, None, line.message
            continue
        try:
            yield line.number, validate_json(line.data), None
        except ValidationError as error:
            described = describe_validation_error(error)
            message = "; ".join(
                f"{d.field}: {d.message}" if d.field else d.message for d in described
            )
            yield line.number, None, message


class _Thumbnails:
    """JPEG data URIs of images below one root, each made once; a reason when impossible."""

    def __init__(self, root: Path, size: int) -> None:
        self.resolver = ImageResolver(root)
        self.size = size
        self.made: dict[str, tuple[str | None, str | None]] = {}

    def get(self, relative: str) -> tuple[str | None, str | None]:
        """(data URI, None) or (None, why there is no thumbnail)."""
        if relative not in self.made:
            self.made[relative] = self._make(relative)
        return self.made[relative]

    def _make(self, relative: str) -> tuple[str | None, str | None]:
        problem = self.resolver.problem(relative)
        if problem is not None:
            return None, problem
        full = self.resolver.full_path(relative)
        try:
            probe_image(full)  # empty files, non-images and decompression bombs, cheaply
            with Image.open(full) as image:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode at reduced scale
                image.thumbnail((self.size, self.size))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        except ImageProblem as error:
            return None, str(error)
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            return None, f"image cannot be decoded: {error}"
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), None


# --- HTML ------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(path: Path, root: Path, selection: Selection, how: str, thumbs: _Thumbnails) -> str:
    shown = len(selection.samples)
    summary = (
        f"{shown:,} of {selection.valid:,} valid sample(s), {how}; "
        f"{selection.invalid_count:,} invalid line(s); images from {root}"
    )
    body = [f"<h1>{_e(path.name)}</h1>", f'<p class="summary">{_e(summary)}</p>']
    if selection.invalid:
        body.append(_invalid_section(path, selection))
    body.extend(_sample_html(line, sample, thumbs) for line, sample in selection.samples)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>preview: {_e(path.name)}</title>\n<style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _invalid_section(path: Path, selection: Selection) -> str:
    items = "".join(
        f"<li>line {number}: {_e(message)}</li>" for number, message in selection.invalid
    )
    more = selection.invalid_count - len(selection.invalid)
    tail = f"<p>... and {more:,} more</p>" if more else ""
    return (
        f'<section class="invalid"><h2>{selection.invalid_count:,} invalid line(s)</h2>'
        f"<ul>{items}</ul>{tail}<p>Run <code>phi3v-data validate {_e(path.name)}</code> for "
        "every check.</p></section>"
    )


def _sample_html(line: int, sample: Sample, thumbs: _Thumbnails) -> str:
    turns = "".join(_turn_html(turn, thumbs) for turn in sample.conversations)
    meta = ""
    if sample.meta:
        dumped = orjson.dumps(sample.meta, option=orjson.OPT_INDENT_2).decode()
        meta = f"<details open><summary>meta</summary><pre>{_e(dumped)}</pre></details>"
    return (
        f'<article class="sample"><header>{_e(sample.id)}<span>source {_e(sample.source)}'
        f"</span><span>line {line}</span></header>{turns}{meta}</article>"
    )


def _turn_html(turn: Turn, thumbs: _Thumbnails) -> str:
    figures = "".join(
        _figure_html(number, relative, thumbs)
        for number, relative in enumerate(turn.images, start=1)
    )
    images = f'<div class="images">{figures}</div>' if figures else ""
    user = user_content(turn.user, len(turn.images))
    answer = (
        f'<pre class="text">{_e(turn.assistant)}</pre>'
        if turn.assistant
        else '<p class="empty">(no answer)</p>'
    )
    return (
        f'<div class="turn"><div class="user"><div class="role">user</div>{images}'
        f'<pre class="text">{_e(user)}</pre></div>'
        f'<div class="assistant"><div class="role">assistant</div>{answer}</div></div>'
    )


def _figure_html(number: int, relative: str, thumbs: _Thumbnails) -> str:
    uri, problem = thumbs.get(relative)
    caption = f"<figcaption>&lt;|image_{number}|&gt; {_e(relative)}</figcaption>"
    if uri is None:
        size = thumbs.size
        box = (
            f'<div class="missing" style="width:{size}px;height:{size // 2}px">'
            f"image unavailable: {_e(problem)}</div>"
        )
        return f"<figure>{box}{caption}</figure>"
    return f'<figure><img src="{uri}" alt="{_e(relative)}">{caption}</figure>'
