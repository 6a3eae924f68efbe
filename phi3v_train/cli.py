"""``phi3v-train``: the trainer's command line (the training commands arrive in later releases)."""

from __future__ import annotations

import click

from phi3v_train import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phi3v-train")
def main() -> None:
    """Fine-tune Phi-3.5-vision on data written by phi3v-data."""
