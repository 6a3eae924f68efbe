"""``phi3v-data convert``: one subcommand per registered converter, options from its model.

Each converter's :class:`~phi3v_data.converter.ConverterOptions` fields become flags, in
both spellings (``--num-frames`` and ``--num_frames``), so the Cookbook's underscore style
keeps working. ``--plugin FILE`` may stand anywhere on the line: it is loaded before the
converter name is looked up.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from phi3v_data.converter import SourceError
from phi3v_data.engine import ConvertError, convert
from phi3v_data.registry import RegistryError, available_converters, get_converter, load_plugin

EXIT_SKIPPED = 1


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _click_type(inner[0])
    if origin is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return bool, True
    if annotation in (int, float, str):
        return annotation, False
    if annotation is Path:
        return click.Path(path_type=Path), False
    return str, False


def _option(name: str, field: FieldInfo) -> click.Option:
    click_type, is_flag = _click_type(field.annotation)
    dashed, underscored = f"--{name.replace('_', '-')}", f"--{name}"
    spellings = [dashed] if dashed == underscored else [dashed, underscored]
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if is_flag:
        off = f"--no-{name.replace('_', '-')}"
        return click.Option(
            [f"{dashed}/{off}"], default=bool(default), help=field.description, show_default=True
        )
    return click.Option(
        [*spellings, name],
        type=click_type,
        default=default,
        required=field.is_required(),
        show_default=default is not None,
        help=field.description,
    )


def _common_options() -> list[click.Option]:
    return [
        click.Option(
            ["--src", "src"], type=click.Path(path_type=Path), help="The raw dataset on disk."
        ),
        click.Option(
            ["--out_dir", "--out-dir", "out_dir"],
            type=click.Path(file_okay=False, path_type=Path),
            required=True,
            help="Where images/, the jsonl files and manifest.json go.",
        ),
        click.Option(
            ["--workers"],
            type=click.IntRange(1),
            help="Worker processes (default: the machine's cores).",
        ),
        click.Option(["--overwrite"], is_flag=True, help="Replace an existing conversion."),
        click.Option(
            ["--link"], is_flag=True, help="Hard-link image files instead of copying them."
        ),
        click.Option(["--no-progress"], is_flag=True, help="No progress bar."),
        click.Option(["--plugin"], multiple=True, help="A Python file that registers converters."),
    ]


def _command_for(name: str) -> click.Command:
    converter_class = get_converter(name)
    fields = converter_class.Options.model_fields
    params = _common_options() + [_option(key, field) for key, field in fields.items()]

    def run(**values: Any) -> None:
        values.pop("plugin", None)
        engine = {
            key: values.pop(key) for key in ("src", "out_dir", "workers", "overwrite", "link")
        }
        progress = not values.pop("no_progress")
        try:
            manifest = convert(name, progress=progress, **engine, **values)
        except (ConvertError, SourceError, RegistryError) as error:
            raise click.UsageError(str(error)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: run the same command again to resume", err=True)
            sys.exit(130)
        _print_summary(manifest, engine["out_dir"])
        sys.exit(EXIT_SKIPPED if manifest["skipped"] else 0)

    return click.Command(
        name,
        params=params,
        callback=run,
        help=converter_class.summary or converter_class.__doc__,
    )


def _print_summary(manifest: dict[str, Any], out_dir: Path) -> None:
    if manifest.get("up_to_date"):
        click.echo(f"{out_dir}: already converted with these settings; nothing to do")
    for split, entry in manifest["splits"].items():
        skipped = f", {entry['skipped']:,} skipped" if entry["skipped"] else ""
        click.echo(f"{split}: {entry['samples']:,} samples -> {out_dir / entry['file']}{skipped}")
    if manifest["reencoded"]["count"]:
        click.echo(f"{manifest['reencoded']['count']:,} image(s) re-encoded (see manifest.json)")
    if manifest["skipped"]:
        click.echo(
            f"{manifest['skipped']:,} raw item(s) skipped; reasons in {out_dir / 'skipped.jsonl'}",
            err=True,
        )


class ConvertGroup(click.Group):
    """Subcommands are the registered converters, looked up after ``--plugin`` files load."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(available_converters())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _load_plugins_from_argv(ctx.args)
        try:
            return _command_for(cmd_name)
        except RegistryError as error:
            raise click.UsageError(str(error)) from None


def _load_plugins_from_argv(argv: list[str]) -> None:
    """Load ``--plugin FILE`` given after the converter name, before the name is looked up."""
    for position, arg in enumerate(argv):
        path = None
        if arg == "--plugin" and position + 1 < len(argv):
            path = argv[position + 1]
        elif arg.startswith("--plugin="):
            path = arg.split("=", 1)[1]
        if path:
            try:
                load_plugin(path)
            except RegistryError as error:
                raise click.UsageError(str(error)) from None


def _load_plugin_option(ctx: click.Context, _param: click.Parameter, value: tuple) -> None:
    for path in value:
        try:
            load_plugin(path)
        except RegistryError as error:
            raise click.UsageError(str(error)) from None


def _list_converters(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for name, converter_class in available_converters().items():
        click.echo(f"{name:16s} {converter_class.summary}")
    ctx.exit(0)


convert_command = ConvertGroup(
    "convert",
    help="Convert a raw dataset (SOURCE) into the phi3v layout: phi3v-data convert SOURCE "
    "--src PATH --out_dir DIR. Exit status 1 when raw items were skipped.",
    params=[
        click.Option(
            ["--list"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_list_converters,
            help="List the available converters.",
        ),
        click.Option(
            ["--plugin"],
            multiple=True,
            expose_value=False,
            is_eager=True,
            callback=_load_plugin_option,
            help="A Python file that registers converters (may repeat).",
        ),
    ],
)
