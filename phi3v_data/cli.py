"""``phi3v-data``: a thin click layer over the Python API.

Each command calls one documented function (``validate``, ``stats``) and only formats
its result. Exit status: 0 clean, 1 problems found in the data, 2 usage errors (click's
own convention, which also covers missing files).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import click
import orjson

from phi3v_data import __version__
from phi3v_data.convert_cli import convert_command
from phi3v_data.jsonl import atomic_writer
from phi3v_data.lengths import TokenizerError
from phi3v_data.preview import write_preview
from phi3v_data.schema import json_schema
from phi3v_data.stats import stats as compute_stats
from phi3v_data.validate import Report, length_summary, validate

EXIT_PROBLEMS = 1
EXIT_USAGE = 2

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
output_format = click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json prints exactly one JSON document on stdout.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="phi3v-data")
def main() -> None:
    """Convert, check and inspect Phi-3.5-vision fine-tuning data."""


main.add_command(convert_command)


@main.command("validate")
@click.argument("files", nargs=-1, required=True, type=existing_file)
@click.option(
    "--images-root",
    type=existing_dir,
    help="Folder the image paths are relative to (default: images/ beside each file).",
)
@click.option("--decode", is_flag=True, help="Fully decode every image (slower, finds truncation).")
@click.option("--no-images", is_flag=True, help="Skip all image checks (schema and ids only).")
@click.option(
    "--num-crops",
    type=click.IntRange(1, 16),
    help="Report image-token counts and sequence lengths at this num_crops.",
)
@click.option(
    "--max-length",
    type=click.IntRange(1),
    help="With --num-crops: samples longer than this many tokens are errors.",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, path_type=Path),
    help="Model or tokenizer folder (tokenizer.json) for exact text token counts.",
)
@click.option(
    "--show", type=click.IntRange(0), default=20, show_default=True, help="Problems shown per kind."
)
@output_format
def validate_command(
    files: tuple[Path, ...],
    images_root: Path | None,
    decode: bool,
    no_images: bool,
    num_crops: int | None,
    max_length: int | None,
    tokenizer: Path | None,
    show: int,
    output: str,
) -> None:
    """Check FILES (jsonl) against the data contract before any GPU time is spent."""
    if max_length is not None and num_crops is None:
        raise click.UsageError("--max-length needs --num-crops (image token counts depend on it)")
    if no_images and (decode or num_crops):
        raise click.UsageError("--no-images cannot be combined with --decode or --num-crops")
    try:
        report = validate(
            files,
            images_root=images_root,
            check_images=not no_images,
            decode=decode,
            num_crops=num_crops,
            max_length=max_length,
            tokenizer=tokenizer,
        )
    except TokenizerError as error:
        raise click.UsageError(str(error)) from None
    if output == "json":
        sys.stdout.buffer.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
    else:
        _print_report(report, show)
    sys.exit(0 if report.ok else EXIT_PROBLEMS)


def _print_report(report: Report, show: int) -> None:
    echo = click.echo
    valid = sum(f.valid for f in report.files)
    echo(
        f"{len(report.files)} file(s), {report.samples:,} samples, {valid:,} without errors: "
        f"{len(report.errors):,} error(s), {len(report.warnings):,} warning(s)"
    )
    for title, problems in (("error", report.errors), ("warning", report.warnings)):
        by_kind: dict[str, list] = defaultdict(list)
        for problem in problems:
            by_kind[problem.kind].append(problem)
        for kind, group in sorted(by_kind.items()):
            echo(f"\n{kind} ({len(group):,} {title}{'s' if len(group) > 1 else ''}):")
            for problem in group[:show]:
                echo(f"  {problem}")
            if len(group) > show:
                echo(f"  ... and {len(group) - show:,} more (--show N, or --format json for all)")
    if report.lengths is not None:
        how = "exact" if report.exact_lengths else "estimated (pass --tokenizer for exact)"
        echo(f"\ntoken lengths at num_crops={report.num_crops}, text {how}:")
        summary = length_summary(report.lengths)
        if summary:
            echo("  " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
            longest = max(report.lengths, key=lambda s: s.total)
            echo(f"  longest: {longest.file}:{longest.line} [id {longest.id}] {longest.total:,}")
        if report.max_length is not None:
            echo(f"  {len(report.overflows):,} sample(s) over --max-length {report.max_length:,}")


@main.command("schema")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def schema_command(out: Path | None) -> None:
    """Print the JSON Schema of one jsonl line (generated from the pydantic models)."""
    text = orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    if out is None:
        sys.stdout.buffer.write(text)
    else:
        with atomic_writer(out) as file:
            file.write(text)


@main.command("stats")
@click.argument("files", nargs=-1, required=True, type=existing_file)
@click.option("--images-root", type=existing_dir, help="Default: images/ beside each file.")
@click.option("--num-crops", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, path_type=Path),
    help="Model or tokenizer folder for exact text token counts.",
)
@output_format
def stats_command(
    files: tuple[Path, ...],
    images_root: Path | None,
    num_crops: int,
    tokenizer: Path | None,
    output: str,
) -> None:
    """Summarise FILES: splits, sources, images, token counts and text lengths."""
    try:
        result = compute_stats(
            files, images_root=images_root, num_crops=num_crops, tokenizer=tokenizer
        )
    except TokenizerError as error:
        raise click.UsageError(str(error)) from None
    if output == "json":
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    _print_stats(result)


def _print_stats(result: dict) -> None:
    echo = click.echo
    echo(f"{result['samples']:,} samples in {len(result['files'])} file(s)")
    if result["invalid_lines"]:
        echo(f"  {result['invalid_lines']:,} invalid line(s) skipped (run phi3v-data validate)")
    echo("splits:  " + ", ".join(f"{k} {v:,}" for k, v in result["splits"].items()))
    echo("sources: " + ", ".join(f"{k} {v:,}" for k, v in result["sources"].items()))
    rows = [
        ("turns per sample", result["turns_per_sample"]),
        ("images per sample", result["images_per_sample"]),
        ("image width", result["images"]["width"]),
        ("image height", result["images"]["height"]),
        (
            f"image tokens per image (num_crops={result['num_crops']})",
            result["image_tokens_per_image"],
        ),
        ("image tokens per sample", result["image_tokens_per_sample"]),
        ("user text, characters", result["text"]["user_chars"]),
        ("assistant text, characters", result["text"]["assistant_chars"]),
        (
            "text tokens" + ("" if result["text"]["tokens_exact"] else " (estimated)"),
            result["text"]["tokens"],
        ),
        ("sequence length, tokens", result["sequence_length"]),
    ]
    for title, dist in rows:
        if dist:
            values = ", ".join(f"{k} {v:,}" for k, v in dist.items() if k != "count")
            echo(f"{title}: {values}")
    images = result["images"]
    echo(f"distinct images: {images['distinct']:,} ({images['unreadable']:,} unreadable)")
    if images["most_common_sizes"]:
        echo(
            "most common sizes: "
            + ", ".join(f"{k} ({v:,})" for k, v in images["most_common_sizes"].items())
        )


@main.command("preview")
@click.argument("file", type=existing_file)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write (self-contained; opens from disk).",
)
@click.option(
    "-n", "count", type=click.IntRange(1), default=20, show_default=True, help="Samples to show."
)
@click.option(
    "--random", "pick_random", is_flag=True, help="Pick samples at random instead of the first N."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random.")
@click.option("--images-root", type=existing_dir, help="Default: images/ beside FILE.")
@click.option(
    "--thumb",
    type=click.IntRange(16, 2048),
    default=256,
    show_default=True,
    help="Thumbnail size in pixels (longest side).",
)
def preview_command(
    file: Path,
    out: Path,
    count: int,
    pick_random: bool,
    seed: int,
    images_root: Path | None,
    thumb: int,
) -> None:
    """Write one HTML page showing samples of FILE (jsonl): images, turns and meta."""
    written = write_preview(
        file, out, n=count, random=pick_random, seed=seed, images_root=images_root, thumb=thumb
    )
    click.echo(f"wrote {written}")
