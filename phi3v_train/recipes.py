"""Named presets from the published Phi-3(.5)-vision fine-tuning tables.

Source: the Cookbook's recipe page ``md/03.FineTuning/FineTuning_Vision.md`` (our copy is the
Russian translation, ``reference/seed-FineTuning_Vision.ru.md``; the tables are repeated in
``reference/datasets.md`` §1.2-1.4). Every row becomes one recipe: the table's learning rate,
epochs, LoRA rank and alpha (as ``lora_alpha_ratio = alpha / rank``), batch size 64 and
precision, with the scripts' ``num_crops`` 16. bf16 rows are named ``<dataset>-<method>``,
fp16 rows ``<dataset>-<method>-fp16``. The published bf16 runs also used
``--use_flash_attention``; recipes leave the attention kernel to the machine, since it
changes speed and memory, not the result.

The DocVQA and Hateful Memes rows were measured with Phi-3-vision, not 3.5, and on the
Cookbook's own splits; the reference score says so. UCF-101 has no table: its two recipes are
the script's defaults, as documented, without a published score.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from phi3v_train.config import TrainConfig

RECIPE_PAGE = "Phi-3CookBook md/03.FineTuning/FineTuning_Vision.md"


class UnknownRecipeError(ValueError):
    """No recipe of that name; the message lists the names there are."""


def format_float(value: float) -> str:
    """Learning rates as people write them: 2e-4, 5e-6, 2.5e-5."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class ReferenceResult(BaseModel):
    """The score a published run reached, for comparison — not a guarantee."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["anls", "accuracy"] = Field(description="What the table reports.")
    value: float = Field(ge=0, le=100, description="Percent, as published (0-100).")
    model: str = Field(description="The checkpoint the published run fine-tuned.")
    data: str = Field(description="What the run trained and was evaluated on.")
    source: str = Field(description="Document, table and row the number comes from.")

    def __str__(self) -> str:
        name = "ANLS" if self.metric == "anls" else "accuracy"
        return f"{name} {self.value:.2f} ({self.model})"


class Recipe(BaseModel):
    """A named set of TrainConfig settings, checked against TrainConfig when defined."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    description: str
    settings: dict[str, Any] = Field(description="TrainConfig settings this recipe sets.")
    reference: ReferenceResult | None = Field(
        None, description="The published result these settings reached; None if unpublished."
    )

    @model_validator(mode="after")
    def _settings_are_valid(self) -> Recipe:
        TrainConfig(**self.settings)  # unknown keys and bad values fail at definition time
        return self

    def config(self) -> TrainConfig:
        """The recipe on top of the defaults."""
        return TrainConfig(**self.settings)


# Per dataset: the table's fixed settings and where its numbers were measured.
_DATASETS: dict[str, dict[str, Any]] = {
    "docvqa": {
        "title": "DocVQA",
        "table": "DocVQA (Phi-3-vision)",
        "metric": "anls",
        "model": "Phi-3-vision-128k-instruct",
        "data": "train: the Cauldron docvqa train split (--full_train); "
        "eval: nielsr/docvqa_1200_examples test (200 questions)",
    },
    "hateful-memes": {
        "title": "Hateful Memes",
        "table": "Hateful memes (Phi-3-vision)",
        "metric": "accuracy",
        "model": "Phi-3-vision-128k-instruct",
        "data": "train: the Cauldron hateful_memes train[500:]; eval: train[:500] "
        "(not the official dev/test sets)",
    },
    "nlvr2": {
        "title": "NLVR2",
        "table": "NLVR2",
        "metric": "accuracy",
        "model": "Phi-3.5-vision-instruct",
        "data": "train: the Cauldron nlvr2 train[500:]; eval: train[:500] "
        "(not the official dev/test sets)",
    },
}

_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full fine-tuning (DeepSpeed ZeRO-2 on GPU)", {}),
    "frozen-vision": (
        "full fine-tuning with the vision tower frozen",
        {"freeze_vision_model": True},
    ),
    "lora": ("LoRA on language and vision modules", {"use_lora": True}),
    "qlora": ("QLoRA (4-bit nf4 base) on language and vision modules", {"use_qlora": True}),
}

# The published rows: dataset, method, precision, learning rate, epochs, LoRA (rank, alpha),
# score. Batch size is 64 in every row.
_TABLE: list[tuple[str, str, str, float, int, tuple[int, int] | None, float]] = [
    ("docvqa", "full", "bf16", 5e-6, 2, None, 83.65),
    ("docvqa", "full", "fp16", 5e-6, 2, None, 82.60),
    ("docvqa", "frozen-vision", "bf16", 1e-4, 2, None, 79.19),
    ("docvqa", "frozen-vision", "fp16", 1e-4, 2, None, 78.74),
    ("docvqa", "lora", "bf16", 2e-4, 2, (32, 16), 82.46),
    ("docvqa", "lora", "fp16", 2e-4, 2, (32, 16), 82.34),
    ("docvqa", "qlora", "bf16", 2e-4, 2, (32, 16), 81.85),
    ("docvqa", "qlora", "fp16", 2e-4, 2, (32, 16), 81.85),
    ("hateful-memes", "full", "bf16", 5e-5, 2, None, 86.4),
    ("hateful-memes", "full", "fp16", 5e-5, 2, None, 85.4),
    ("hateful-memes", "frozen-vision", "bf16", 1e-4, 3, None, 79.4),
    ("hateful-memes", "frozen-vision", "fp16", 1e-4, 3, None, 78.6),
    ("hateful-memes", "lora", "bf16", 2e-4, 2, (128, 256), 86.6),
    ("hateful-memes", "lora", "fp16", 2e-4, 2, (128, 256), 85.2),
    ("hateful-memes", "qlora", "bf16", 2e-4, 2, (128, 256), 84.0),
    ("hateful-memes", "qlora", "fp16", 2e-4, 2, (128, 256), 83.8),
    ("nlvr2", "full", "bf16", 1e-5, 3, None, 89.40),
    ("nlvr2", "frozen-vision", "bf16", 2e-5, 2, None, 89.20),
]


def _from_table(
    dataset: str,
    method: str,
    precision: str,
    learning_rate: float,
    epochs: int,
    lora: tuple[int, int] | None,
    score: float,
) -> Recipe:
    info = _DATASETS[dataset]
    method_text, method_settings = _METHODS[method]
    settings: dict[str, Any] = {
        **method_settings,
        "learning_rate": learning_rate,
        "num_train_epochs": epochs,
        "batch_size": 64,
        "num_crops": 16,
        "bf16": precision == "bf16",
    }
    lora_text = ""
    if lora is not None:
        rank, alpha = lora
        settings |= {"lora_rank": rank, "lora_alpha_ratio": alpha / rank}
        lora_text = f", r{rank}/alpha{alpha}"
    row = f"{method.replace('-', ' ')}, {precision}"
    return Recipe(
        name=f"{dataset}-{method}" + ("" if precision == "bf16" else f"-{precision}"),
        description=f"{info['title']}: {method_text}{lora_text}, {precision}, "
        f"lr {format_float(learning_rate)}, {epochs} epochs, batch 64, 16 crops.",
        settings=settings,
        reference=ReferenceResult(
            metric=info["metric"],
            value=score,
            model=info["model"],
            data=info["data"],
            source=f"{RECIPE_PAGE}, table '{info['table']}', row '{row}'",
        ),
    )


_UCF101_SCRIPT = "finetune_hf_trainer_ucf101.py defaults (reference/datasets.md §1.5)"

_RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in [
        *(_from_table(*row) for row in _TABLE),
        Recipe(
            name="ucf101-full",
            description="UCF-101 (8 frames per video): the recipe page's documented command, "
            f"i.e. the {_UCF101_SCRIPT}: full fine-tuning, fp16, lr 4e-5, 1 epoch, batch 16, "
            "4 crops. No published score.",
            settings={
                "learning_rate": 4e-5,
                "num_train_epochs": 1,
                "batch_size": 16,
                "num_crops": 4,
            },
        ),
        Recipe(
            name="ucf101-lora",
            description=f"UCF-101 (8 frames per video): the {_UCF101_SCRIPT} with --use_lora: "
            "LoRA r64/alpha128, fp16, lr 4e-5, 1 epoch, batch 16, 4 crops. No published score.",
            settings={
                "use_lora": True,
                "lora_rank": 64,
                "lora_alpha_ratio": 2.0,
                "learning_rate": 4e-5,
                "num_train_epochs": 1,
                "batch_size": 16,
                "num_crops": 4,
            },
        ),
    ]
}


def list_recipes() -> list[Recipe]:
    """Every recipe, in table order (copies: changing one does not change the registry)."""
    return [recipe.model_copy(deep=True) for recipe in _RECIPES.values()]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`UnknownRecipeError` lists the names there are."""
    recipe = _RECIPES.get(name)
    if recipe is None:
        close = difflib.get_close_matches(name, _RECIPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownRecipeError(f"unknown recipe {name!r}{hint}; recipes: {', '.join(_RECIPES)}")
    return recipe.model_copy(deep=True)
