"""``phi3v-train``: the trainer's command line (``train`` is the default command)."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from phi3v_train import __version__
from phi3v_train.recipes import UnknownRecipeError, format_float, get_recipe, list_recipes
from phi3v_train.train_cli import DefaultCommandGroup, train_command


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phi3v-train")
def main() -> None:
    """Fine-tune Phi-3.5-vision on data written by phi3v-data.

    Training is the default command: `phi3v-train --data_dir DIR ...` is
    `phi3v-train train --data_dir DIR ...` (see `phi3v-train train --help`).
    """


main.add_command(train_command)


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


def _first_line(error: BaseException) -> str:
    """The first line of an error message: a user mistake deserves one line, not a page."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@main.command("eval")
@click.option(
    "--model", "model_dir", required=True, help="Model directory (official layout) or hub id."
)
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(path_type=Path),
    help="A <name>_<split>.jsonl file; its images/ folder lies beside it.",
)
@click.option(
    "--adapter",
    "adapter_dir",
    type=click.Path(path_type=Path),
    help="A LoRA adapter directory (PEFT format) to apply to the model.",
)
@click.option(
    "--num_crops", type=click.IntRange(1, 16), help="Crops per image (default: the processor's)."
)
@click.option("--batch_size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max_new_tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--max_samples", type=click.IntRange(min=1), help="Evaluate the first N samples only."
)
@click.option(
    "--output_dir",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where <data stem>_predictions.json and _metrics.json are written.",
)
def eval_command(
    model_dir: str,
    data_file: Path,
    adapter_dir: Path | None,
    num_crops: int | None,
    batch_size: int,
    max_new_tokens: int,
    max_samples: int | None,
    output_dir: Path,
) -> None:
    """Generate greedy answers for a data file and score them (accuracy, ANLS, AUROC)."""
    from phi3v_data import read_jsonl, validate
    from phi3v_data.layout import images_root_for

    if not data_file.is_file():
        raise click.ClickException(f"--data {data_file}: no such file")
    report = validate([data_file])
    if not report.ok:
        more = len(report.errors) - 1
        hint = f" (+{more} more; 'phi3v-data validate {data_file}' lists all)" if more else ""
        raise click.ClickException(f"invalid data: {report.errors[0]}{hint}")
    samples = list(read_jsonl(data_file))
    if not samples:
        raise click.ClickException(f"--data {data_file}: the file has no samples")

    from phi3v_train.evaluate import (
        format_metrics,
        load_for_evaluation,
        output_paths,
        run_evaluation,
    )

    try:
        model, processor = load_for_evaluation(model_dir, adapter_dir, num_crops=num_crops)
    except (OSError, ValueError, RuntimeError) as error:
        raise click.ClickException(f"cannot load the model: {_first_line(error)}") from None
    prefix = output_dir / data_file.stem
    try:
        metrics = run_evaluation(
            model,
            processor,
            samples,
            images_root_for(data_file),
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            out_prefix=prefix,
            max_samples=max_samples,
        )
    except (OSError, ValueError) as error:  # an unreadable image, answers the model can't score
        raise click.ClickException(_first_line(error)) from None
    click.echo(format_metrics(metrics))
    for path in output_paths(prefix):
        click.echo(f"wrote {path}")


@main.command("merge")
@click.option(
    "--base", "base_dir", required=True, help="Base model directory (official layout) or hub id."
)
@click.option(
    "--adapter",
    "adapter_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The LoRA adapter directory (PEFT format) to fold into the base.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="New model directory; must not exist or be empty.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    default="auto",
    show_default=True,
    help="Saved precision; auto keeps the base checkpoint's.",
)
def merge_command(base_dir: str, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    """Merge a LoRA adapter into its base model: a directory from_pretrained loads."""
    import torch

    from phi3v_train.merge import merge_adapter

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    try:
        out = merge_adapter(base_dir, adapter_dir, out_dir, dtype=dtypes.get(dtype))
    except (OSError, ValueError, RuntimeError) as error:
        raise click.ClickException(_first_line(error)) from None
    click.echo(f"wrote the merged model to {out}")
