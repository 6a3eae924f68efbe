"""``phi3v-train``: the trainer's command line (the training commands arrive in later releases)."""

from __future__ import annotations

import click
import yaml

from phi3v_train import __version__
from phi3v_train.recipes import UnknownRecipeError, format_float, get_recipe, list_recipes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phi3v-train")
def main() -> None:
    """Fine-tune Phi-3.5-vision on data written by phi3v-data."""


@main.command("recipes")
@click.option("--show", metavar="NAME", help="Print one recipe's settings as a YAML config file.")
def recipes_command(show: str | None) -> None:
    """List the presets from the published tables (use one with --recipe NAME)."""
    if show is not None:
        try:
            recipe = get_recipe(show)
        except UnknownRecipeError as error:
            raise click.BadParameter(str(error), param_hint="--show") from None
        click.echo(f"# {recipe.name}: {recipe.description}")
        reference = recipe.reference
        click.echo(
            f"# reference: {reference}; {reference.source}" if reference else "# no published score"
        )
        if reference:
            click.echo(f"# data: {reference.data}")
        click.echo(yaml.safe_dump(recipe.settings, sort_keys=False), nl=False)
        return
    rows = [("NAME", "METHOD", "PRECISION", "LR", "EPOCHS", "BATCH", "CROPS", "LORA", "REFERENCE")]
    for recipe in list_recipes():
        config = recipe.config()
        lora = f"r{config.lora_rank}/a{config.lora_alpha}" if config.use_lora else "-"
        rows.append(
            (
                recipe.name,
                config.method,
                config.precision,
                format_float(config.learning_rate),
                str(config.num_train_epochs),
                str(config.batch_size),
                str(config.num_crops),
                lora,
                str(recipe.reference) if recipe.reference else "none published",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
