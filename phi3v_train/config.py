"""Every training setting in one validated model, and where each value comes from.

:class:`TrainConfig` keeps the Cookbook scripts' flag names and defaults (``reference/
datasets.md`` §1.1), so their commands port by changing the program name, and adds what the
scripts hard-code or lack (checkpoints, resume, evaluation, schedule). :func:`load_config`
layers defaults < recipe < YAML file < command line and turns pydantic's errors into one
line per mistake that names the file or flag the bad value came from.

Nothing here imports torch: ``phi3v-train recipes`` and config checks run instantly.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

MAX_CROPS = 16
Precision = Literal["bf16", "fp16", "fp32"]
Method = Literal["full", "frozen_vision", "lora", "qlora"]
LORA_SETTINGS = ("lora_rank", "lora_alpha_ratio", "lora_dropout")

# Settings that express one choice between them. A layer (recipe, file, command line) that
# turns one of them on replaces the others from lower layers, so `--recipe docvqa-full --fp32`
# means fp32 rather than a bf16/fp32 conflict. Within one layer a conflict is still an error.
EXCLUSIVE_GROUPS = (("bf16", "fp32"), ("attn", "use_flash_attention"))


class ConfigError(ValueError):
    """Settings that cannot be used; ``problems`` holds one human-readable line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def ds_zero2_config() -> dict[str, Any]:
    """The Cookbook's DeepSpeed ZeRO-2 config (``DS_CONFIG_DICT``), as a new dict each call.

    The Cookbook uses it for every run without LoRA; "auto" values are filled in by the
    transformers Trainer from the training arguments. A fresh dict, because DeepSpeed and the
    Trainer write into the config they are given.
    """
    return {
        "zero_optimization": {
            "stage": 2,
            "allgather_partitions": True,
            "allgather_bucket_size": 5e8,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "contiguous_gradients": True,
            "round_robin_gradients": True,
        },
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


class TrainConfig(BaseModel):
    """All settings of one training run. Unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # --- the Cookbook scripts' flags, same names and defaults -------------------------------
    model_name_or_path: str = Field(
        "microsoft/Phi-3.5-vision-instruct",
        description="Model directory in the official file layout, or a Hub id.",
    )
    output_dir: Path = Field(
        Path("output"), description="Checkpoints, the final model and eval results go here."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Effective (global) batch size; gradient accumulation makes up the rest.",
    )
    batch_size_per_gpu: int = Field(
        1, ge=1, description="Samples per forward pass on each GPU; lower it to fit in memory."
    )
    num_crops: int = Field(
        4,
        description=(
            "Most 336px crops per image (1-16). Default 4, as the UCF-101 script (the one that "
            "trains on a data_dir), the checkpoint's preprocessor_config and `phi3v-data "
            "validate`: 16 crops cost up to ~2.5k tokens per image, too many for multi-image "
            "samples. The DocVQA, NLVR2 and Hateful Memes recipes use the scripts' 16."
        ),
    )
    num_train_epochs: int = Field(1, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(4e-5, gt=0, description="Peak learning rate (AdamW).")
    wd: float = Field(0.01, ge=0, description="AdamW weight decay.")
    use_lora: bool = Field(False, description="Train LoRA adapters instead of the weights.")
    use_qlora: bool = Field(
        False, description="LoRA on a 4-bit nf4 base model (bitsandbytes); implies use_lora."
    )
    lora_rank: int = Field(64, ge=1, description="LoRA rank r.")
    lora_alpha_ratio: float = Field(
        2.0, gt=0, description="lora_alpha = round(lora_rank * lora_alpha_ratio), as the Cookbook."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    freeze_vision_model: bool = Field(
        False,
        description="No gradients or optimizer state for the vision tower; with LoRA, no "
        "adapters on vision modules.",
    )
    bf16: bool = Field(
        False,
        description="bf16 mixed precision. Without it (and without fp32) training runs in fp16 "
        "mixed precision, as in the Cookbook.",
    )
    use_flash_attention: bool = Field(
        False,
        description="Cookbook flag: attn=flash_attention_2 and bf16 (as its NLVR2 and UCF-101 "
        "scripts do; flash attention with fp16 is a known Cookbook failure).",
    )
    tqdm: bool = Field(True, description="Progress bars; --no-tqdm turns them off.")

    # --- ours --------------------------------------------------------------------------------
    fp32: bool = Field(False, description="Full fp32, no mixed precision (e.g. on CPU).")
    attn: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa",
        description="Attention kernel. sdpa is exact and needs no extra package; "
        "flash_attention_2 needs flash-attn and a bf16/fp16 run.",
    )
    data_dir: Path | None = Field(
        None, description="Layout written by phi3v-data: *_train.jsonl, *_val.jsonl, images/."
    )
    train_file: Path | None = Field(
        None, description="Training jsonl; overrides the *_train.jsonl found in data_dir."
    )
    eval_file: Path | None = Field(
        None, description="Evaluation jsonl; overrides the *_val.jsonl found in data_dir."
    )
    max_length: int | None = Field(
        None,
        ge=1,
        description="Longest sample in tokens (image tokens included); None = the model's "
        "context length. Longer samples follow `overlong`; image tokens are never cut.",
    )
    overlong: Literal["drop", "error"] = Field(
        "error",
        description="Samples over max_length: 'error' stops before training and lists them; "
        "'drop' leaves them out, counted and reported.",
    )
    save_steps: int = Field(
        100,
        ge=0,
        description="Checkpoint every N optimizer steps (0: only at the end and on SIGTERM). "
        "The published recipes run ~100-500 steps, so the transformers default of 500 would "
        "often never save mid-run.",
    )
    save_total_limit: int | None = Field(
        2,
        ge=1,
        description="Checkpoints kept (None: all). Full fine-tuning checkpoints with optimizer "
        "state are ~60 GB each, so the Cookbook's 10 would fill most disks.",
    )
    resume: bool = Field(
        False,
        description="Continue from the newest complete checkpoint in output_dir: same step, "
        "schedule and optimizer state.",
    )
    eval: Literal["both", "before", "after", "none"] = Field(
        "both",
        description="When to evaluate on the eval file; the Cookbook always does both "
        "(eval_before.json, eval_after.json).",
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Evaluate on the first N eval samples only (None: all)."
    )
    max_new_tokens: int = Field(64, ge=1, description="Greedy generation limit at evaluation.")
    report_to: Literal["tensorboard", "wandb", "none"] = Field(
        "none", description="Where training logs go besides the console."
    )
    seed: int = Field(42, ge=0, description="Seed for data order, LoRA init and dropout.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.")
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = Field("linear", description="Learning-rate schedule after warm-up.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2 (Cookbook: 0.95).")
    adam_epsilon: float = Field(1e-7, gt=0, description="AdamW epsilon (Cookbook: 1e-7).")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    logging_steps: int = Field(10, ge=1, description="Log loss and learning rate every N steps.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward: ~2443-token samples fit in memory."
    )
    dataloader_num_workers: int = Field(
        4, ge=0, description="Processes that load and transform images."
    )
    max_steps: int = Field(
        -1, ge=-1, description="Stop after N optimizer steps; -1 trains num_train_epochs."
    )
    deepspeed: str = Field(
        "auto",
        description="'auto': the Cookbook's ZeRO-2 config for full and frozen-vision runs on "
        "GPU, none for LoRA or CPU; 'none'; or a DeepSpeed JSON file.",
    )

    @field_validator("num_crops")
    @classmethod
    def _check_num_crops(cls, value: int) -> int:
        if not 1 <= value <= MAX_CROPS:
            raise ValueError(
                f"must be between 1 and {MAX_CROPS}, as the Cookbook scripts require, got {value}"
            )
        return value

    @field_validator("max_steps")
    @classmethod
    def _check_max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (train num_train_epochs) or a positive number of steps")
        return value

    @field_validator("deepspeed")
    @classmethod
    def _check_deepspeed(cls, value: str) -> str:
        if value in ("auto", "none") or Path(value).is_file():
            return value
        raise ValueError(f"expected 'auto', 'none' or a DeepSpeed JSON file; no file {value!r}")

    @model_validator(mode="after")
    def _combine(self) -> TrainConfig:
        if self.use_qlora:
            self.use_lora = True  # the Cookbook's rule: QLoRA is LoRA on a quantized base
        asked_attn = "attn" in self.model_fields_set
        if self.use_flash_attention and asked_attn and self.attn != "flash_attention_2":
            raise ValueError(
                f"use_flash_attention asks for flash_attention_2 but attn is {self.attn!r}; "
                "give only one of them"
            )
        if self.bf16 and self.fp32:
            raise ValueError("bf16 and fp32 are both set; choose one precision")
        if self.fp32 and (self.use_flash_attention or self.attn == "flash_attention_2"):
            raise ValueError(
                "flash attention runs in bf16 or fp16 only; drop fp32 or use attn sdpa"
            )
        if self.use_flash_attention:
            self.attn = "flash_attention_2"
            self.bf16 = True
        if self.batch_size % self.batch_size_per_gpu:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by batch_size_per_gpu "
                f"{self.batch_size_per_gpu}"
            )
        return self

    # --- derived views -------------------------------------------------------------------------
    @property
    def precision(self) -> Precision:
        """bf16 or fp32 when asked for, else fp16 mixed precision (the Cookbook's default)."""
        if self.bf16:
            return "bf16"
        return "fp32" if self.fp32 else "fp16"

    @property
    def method(self) -> Method:
        """Which weights train. LoRA with freeze_vision_model is still "lora" (language-only)."""
        if self.use_qlora:
            return "qlora"
        if self.use_lora:
            return "lora"
        return "frozen_vision" if self.freeze_vision_model else "full"

    @property
    def lora_alpha(self) -> int:
        """The Cookbook's ``round(rank * alpha_ratio)``: rank 32, ratio 0.5 -> alpha 16."""
        return round(self.lora_rank * self.lora_alpha_ratio)

    @property
    def eval_before(self) -> bool:
        return self.eval in ("both", "before")

    @property
    def eval_after(self) -> bool:
        return self.eval in ("both", "after")

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step so that every step sees ``batch_size`` samples.

        The Cookbook asserts ``batch_size % (num_gpus * batch_size_per_gpu) == 0``; we say which
        numbers disagree instead. ``world_size`` is the number of training processes.
        """
        if world_size < 1:
            raise ConfigError([f"world_size must be at least 1, got {world_size}"])
        per_step = self.batch_size_per_gpu * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                [
                    f"batch_size {self.batch_size} is not divisible by batch_size_per_gpu "
                    f"{self.batch_size_per_gpu} x {world_size} process(es) = {per_step}; "
                    f"use a multiple of {per_step}"
                ]
            )
        return self.batch_size // per_step

    def deepspeed_config(self, on_gpu: bool) -> dict[str, Any] | str | None:
        """What to hand the Trainer as ``deepspeed``: a dict, a JSON path, or None (off).

        "auto" follows the Cookbook (``None if use_lora else DS_CONFIG_DICT``) on GPU and is off
        on CPU, where runs are plain PyTorch.
        """
        if self.deepspeed == "none":
            return None
        if self.deepspeed == "auto":
            return ds_zero2_config() if on_gpu and not self.use_lora else None
        return self.deepspeed

    def notes(self) -> list[str]:
        """Settings that are valid but have no effect: worth a warning, not worth stopping."""
        given = sorted(set(LORA_SETTINGS) & self.model_fields_set)
        if given and not self.use_lora:
            return [f"{', '.join(given)} has no effect without use_lora or use_qlora"]
        return []


# --- loading ------------------------------------------------------------------------------------
def load_config(
    yaml_path: str | os.PathLike[str] | None = None,
    recipe: str | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build the run's config: defaults < ``recipe`` < YAML file < command line.

    ``cli_overrides`` holds only the flags the user gave (None means "not given"). Raises
    :class:`ConfigError` with one line per problem, each naming where the value came from;
    logs :meth:`TrainConfig.notes` as warnings.
    """
    # recipes.py imports this module (recipes are validated against TrainConfig)
    from phi3v_train.recipes import UnknownRecipeError, get_recipe

    layers: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    if recipe is not None:
        try:
            layers.append((f"recipe {recipe!r}", dict(get_recipe(recipe).settings)))
        except UnknownRecipeError as error:
            problems.append(str(error))
    if yaml_path is not None:
        label = str(yaml_path)
        values, file_problems = _read_yaml(Path(yaml_path))
        problems += file_problems
        layers.append((label, values))
    cli = {key: value for key, value in (cli_overrides or {}).items() if value is not None}
    layers.append(("command line", cli))
    for label, values in layers:
        for key in [key for key in values if key not in TrainConfig.model_fields]:
            unknown = (
                f"--{key}: not an option"
                if label == "command line"
                else f"{label}: unknown key {key!r}"
            )
            problems.append(unknown + _did_you_mean(key))
            del values[key]  # reported; the known keys are still checked, all in one go
    merged, origin = _merge(layers)
    try:
        config = TrainConfig(**merged)
    except ValidationError as error:
        problems += [_describe(item, origin) for item in error.errors()]
    if problems:
        raise ConfigError(problems)
    for note in config.notes():
        logger.warning(note)
    return config


def _read_yaml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's settings, or the reasons it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, [f"{path}: no such file"]
    except OSError as error:
        return {}, [f"{path}: cannot read: {error.strerror}"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        return {}, [f"{path}: invalid YAML{where}: {problem}"]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [f"{path}: expected 'setting: value' lines, got a {type(data).__name__}"]
    return {str(key): value for key, value in data.items()}, []


def _merge(layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Later layers win; a layer that turns on one member of an exclusive group clears the
    other members set by earlier layers. Returns the values and each key's layer label."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for label, values in layers:
        for group in EXCLUSIVE_GROUPS:
            chosen = [key for key in group if values.get(key) not in (None, False)]
            for key in group:
                if chosen and key not in values and key in merged:
                    del merged[key]
                    del origin[key]
        merged.update(values)
        origin.update(dict.fromkeys(values, label))
    return merged, origin


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), TrainConfig.model_fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_MESSAGES = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be greater than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be one of {expected}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path",
}


def _describe(item: Mapping[str, Any], origin: Mapping[str, str]) -> str:
    """One line for one pydantic error: where the value came from, the setting, the rule."""
    loc = item.get("loc", ())
    if not loc:  # a rule across settings (model validator): its message names them
        return str(item.get("ctx", {}).get("error", item["msg"]))
    key = str(loc[0])
    where = origin.get(key, "default")
    prefix = f"--{key}" if where == "command line" else f"{where}: {key}"
    kind = item["type"]
    if kind == "value_error":
        return f"{prefix}: {item['ctx']['error']}"
    template = _MESSAGES.get(kind)
    message = template.format(**item.get("ctx", {})) if template else item["msg"]
    return f"{prefix}: {message}, got {item.get('input')!r}"
