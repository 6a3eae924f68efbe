"""``phi3v-train [train] --flag ...``: the training command, with the Cookbook's flag names.

Every :class:`~phi3v_train.config.TrainConfig` field is a flag spelled as in the Cookbook
scripts (``--use_lora``, ``--batch_size_per_gpu``); dashes work too (``--use-lora``), and
booleans have a ``--no-`` form (``--no-tqdm``) so a flag can switch off what a config file
or recipe switched on. ``train`` is the default command, so a Cookbook command ports by
changing only the program name::

    torchrun --nproc_per_node=4 finetune_hf_trainer_ucf101.py --data_dir DIR
    torchrun --nproc_per_node=4 -m phi3v_train --data_dir DIR

Nothing here imports torch until training starts, so ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import click

from phi3v_train.config import ConfigError, TrainConfig, load_config

EXIT_DATA = 1  # the data or the machine cannot be used (as phi3v-data)
EXIT_USAGE = 2  # a setting is wrong (click's own status for usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C
DEFAULT_COMMAND = "train"


class DefaultCommandGroup(click.Group):
    """A group that runs ``train`` when the first argument is not a command name.

    ``phi3v-train --data_dir d`` and ``phi3v-train train --data_dir d`` are the same;
    ``phi3v-train recipes``, ``eval`` and ``merge`` are unaffected, and ``--help`` /
    ``--version`` still belong to the group.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        group_flags = {"--help", "-h", "--version"}
        if args and args[0] not in self.commands and args[0] not in group_flags:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


def _click_type(annotation: Any) -> Any:
    """The click type for a TrainConfig field: numbers parsed by click, everything else
    checked by pydantic so its messages (and the config file's) read the same."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(choice) for choice in typing.get_args(annotation)])
    if annotation in (int, float):
        return annotation
    return str


def _config_options(command: Any) -> Any:
    """Add one option per TrainConfig field (default None = "not given on the command line").

    Names are declared with underscores; the command's ``token_normalize_func`` maps dashes
    to underscores, so ``--use-lora`` and ``--no-tqdm`` match ``--use_lora`` and
    ``--no_tqdm`` without doubling every line of ``--help``.
    """
    for name, field in reversed(TrainConfig.model_fields.items()):
        default = "" if field.default is None else f" [default: {field.default}]"
        help_text = (field.description or "") + default
        if field.annotation is bool:
            option = click.option(f"--{name}/--no-{name}", name, default=None, help=help_text)
        else:
            option = click.option(
                f"--{name}", name, type=_click_type(field.annotation), default=None, help=help_text
            )
        command = option(command)
    return command


def _underscores(token: str) -> str:
    return token.replace("-", "_")


@click.command(
    "train",
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "token_normalize_func": _underscores,
    },
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="YAML file of settings (same names as the flags); flags given here override it.",
)
@click.option(
    "--recipe", help="A preset from `phi3v-train recipes`; the file and flags override it."
)
@_config_options
def train_command(config_file: Path | None, recipe: str | None, **flags: Any) -> None:
    """Fine-tune on a phi3v-data layout (the default command: `phi3v-train --data_dir DIR`)."""
    _setup_logging()
    try:
        config = load_config(config_file, recipe, flags)
    except ConfigError as error:
        _fail(error.problems, EXIT_USAGE)
    from phi3v_train.data import DataError
    from phi3v_train.methods import MethodError
    from phi3v_train.train import EXIT_SIGTERM, format_summary, train

    try:
        summary = train(config)
    except ConfigError as error:
        _fail(error.problems, EXIT_USAGE)
    except DataError as error:
        _fail(error.problems, EXIT_DATA)
    except (MethodError, FileNotFoundError, NotADirectoryError) as error:
        _fail([_first_line(error)], EXIT_DATA)
    except KeyboardInterrupt:
        _fail(
            ["interrupted; the newest complete checkpoint can be resumed with --resume"],
            EXIT_INTERRUPTED,
        )
    if _is_main_process():
        for line in format_summary(summary):
            click.echo(line)
    if summary.get("stopped_by_signal"):
        sys.exit(EXIT_SIGTERM)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _fail(problems: list[str], status: int) -> typing.NoReturn:
    """Print one line per problem (rank 0 only under torchrun) and exit with ``status``."""
    if _is_main_process():
        for problem in problems:
            click.echo(f"phi3v-train: {problem}", err=True)
    sys.exit(status)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _EchoHandler(logging.Handler):
    """Writes through click, so output follows whatever stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"phi3v-train: {self.format(record)}", err=True)


def _setup_logging() -> None:
    """Notices of phi3v_train (fallbacks, dropped samples, resume) go to stderr, once per
    job: the other ranks under torchrun only report errors."""
    package = logging.getLogger("phi3v_train")
    if not any(isinstance(handler, _EchoHandler) for handler in package.handlers):
        package.addHandler(_EchoHandler())
    package.setLevel(logging.INFO if _is_main_process() else logging.ERROR)
