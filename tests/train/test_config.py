"""TrainConfig, load_config's layering and messages, the recipes and their CLI."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from phi3v_train.cli import main
from phi3v_train.config import ConfigError, TrainConfig, ds_zero2_config, load_config
from phi3v_train.recipes import Recipe, UnknownRecipeError, get_recipe, list_recipes


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


def test_config_and_recipes_import_no_torch():
    code = (
        "import sys, phi3v_train.config, phi3v_train.recipes, phi3v_train.cli; "
        "print(','.join(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


# --- defaults and derived views ------------------------------------------------------------


def test_cookbook_defaults():
    config = load_config()
    assert config == TrainConfig()
    assert config.model_name_or_path == "microsoft/Phi-3.5-vision-instruct"
    assert str(config.output_dir) == "output"
    assert (config.batch_size, config.batch_size_per_gpu, config.num_crops) == (16, 1, 4)
    assert (config.num_train_epochs, config.learning_rate, config.wd) == (1, 4e-5, 0.01)
    assert (config.lora_rank, config.lora_alpha_ratio, config.lora_dropout) == (64, 2.0, 0.0)
    assert config.lora_alpha == 128
    assert not (config.use_lora or config.use_qlora or config.freeze_vision_model)
    assert not (config.bf16 or config.use_flash_attention) and config.tqdm
    # the scripts' hard-coded TrainingArguments
    assert (config.adam_beta1, config.adam_beta2, config.adam_epsilon) == (0.9, 0.95, 1e-7)
    assert (config.warmup_steps, config.lr_scheduler_type) == (50, "linear")
    assert (config.max_grad_norm, config.logging_steps) == (1.0, 10)
    assert config.gradient_checkpointing and config.dataloader_num_workers == 4
    assert (config.max_steps, config.max_new_tokens, config.report_to) == (-1, 64, "none")
    assert (config.method, config.precision, config.attn) == ("full", "fp16", "sdpa")
    assert config.eval_before and config.eval_after


def test_qlora_implies_lora():
    config = TrainConfig(use_qlora=True)
    assert config.use_lora and config.method == "qlora"


@pytest.mark.parametrize(
    ("settings", "method"),
    [
        ({}, "full"),
        ({"freeze_vision_model": True}, "frozen_vision"),
        ({"use_lora": True}, "lora"),
        ({"use_lora": True, "freeze_vision_model": True}, "lora"),
        ({"use_qlora": True, "freeze_vision_model": True}, "qlora"),  # allowed, as the Cookbook
    ],
)
def test_method(settings, method):
    assert TrainConfig(**settings).method == method


@pytest.mark.parametrize(
    ("settings", "precision", "attn"),
    [
        ({}, "fp16", "sdpa"),  # the Cookbook trains in fp16 without --bf16
        ({"bf16": True}, "bf16", "sdpa"),
        ({"fp32": True}, "fp32", "sdpa"),
        ({"fp32": True, "attn": "eager"}, "fp32", "eager"),
        ({"use_flash_attention": True}, "bf16", "flash_attention_2"),  # as NLVR2/UCF-101 do
        ({"attn": "flash_attention_2"}, "fp16", "flash_attention_2"),  # the trainer may swap
        ({"use_flash_attention": True, "attn": "flash_attention_2"}, "bf16", "flash_attention_2"),
    ],
)
def test_precision_and_attention(settings, precision, attn):
    config = TrainConfig(**settings)
    assert (config.precision, config.attn) == (precision, attn)
    assert TrainConfig(**config.model_dump()) == config  # the normalised form validates again


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bf16": True, "fp32": True}, "bf16 and fp32 are both set; choose one precision"),
        ({"fp32": True, "use_flash_attention": True}, "flash attention runs in bf16 or fp16"),
        ({"fp32": True, "attn": "flash_attention_2"}, "flash attention runs in bf16 or fp16"),
        ({"use_flash_attention": True, "attn": "eager"}, "but attn is 'eager'"),
        ({"batch_size": 16, "batch_size_per_gpu": 3}, "batch_size 16 is not divisible by"),
        ({"max_steps": 0}, "must be -1"),
        ({"num_crops": 17}, "between 1 and 16, as the Cookbook scripts require, got 17"),
        ({"deepspeed": "no-such.json"}, "expected 'auto', 'none' or a DeepSpeed JSON file"),
        ({"learning_rte": 1e-4}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_combinations(settings, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**settings)


def test_gradient_accumulation_steps():
    assert TrainConfig(batch_size=64).gradient_accumulation_steps(4) == 16  # 64 / (1 * 4)
    assert TrainConfig(batch_size=64, batch_size_per_gpu=2).gradient_accumulation_steps(4) == 8
    assert TrainConfig().gradient_accumulation_steps(16) == 1
    with pytest.raises(ConfigError) as excinfo:
        TrainConfig(batch_size=16).gradient_accumulation_steps(3)
    assert problems(excinfo) == [
        "batch_size 16 is not divisible by batch_size_per_gpu 1 x 3 process(es) = 3; "
        "use a multiple of 3"
    ]
    with pytest.raises(ConfigError, match=r"batch_size 16 is not divisible .* = 32"):
        TrainConfig(batch_size=16, batch_size_per_gpu=2).gradient_accumulation_steps(16)
    with pytest.raises(ConfigError, match="world_size must be at least 1"):
        TrainConfig().gradient_accumulation_steps(0)


def test_deepspeed_follows_the_cookbook(tmp_path):
    assert TrainConfig().deepspeed_config(on_gpu=True) == ds_zero2_config()
    assert TrainConfig(freeze_vision_model=True).deepspeed_config(on_gpu=True) is not None
    assert TrainConfig(use_lora=True).deepspeed_config(on_gpu=True) is None
    assert TrainConfig(use_qlora=True).deepspeed_config(on_gpu=True) is None
    assert TrainConfig().deepspeed_config(on_gpu=False) is None
    assert TrainConfig(deepspeed="none").deepspeed_config(on_gpu=True) is None
    own = write(tmp_path, "{}", "ds.json")
    assert TrainConfig(deepspeed=str(own), use_lora=True).deepspeed_config(on_gpu=True) == str(own)


def test_ds_zero2_config_is_the_cookbooks_and_fresh():
    first = ds_zero2_config()
    zero = first["zero_optimization"]
    assert zero["stage"] == 2 and zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 5e8
    assert zero["overlap_comm"] and zero["contiguous_gradients"] and zero["round_robin_gradients"]
    assert first["fp16"] == {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }
    assert first["bf16"] == {"enabled": "auto"}
    assert first["gradient_accumulation_steps"] == first["train_batch_size"] == "auto"
    first["zero_optimization"]["stage"] = 3  # DeepSpeed writes into its config
    assert ds_zero2_config()["zero_optimization"]["stage"] == 2


# --- load_config: layering and messages ---------------------------------------------------


def test_precedence_defaults_recipe_yaml_command_line(tmp_path):
    path = write(
        tmp_path,
        # YAML 1.1 reads 1e-4 (no dot) as a string; it must still become a float
        "learning_rate: 1e-4\nlora_rank: 16\nnum_crops: 8\nmax_length: 4096\n",
    )
    config = load_config(path, "docvqa-lora", {"num_crops": 4, "max_length": None})
    assert config.learning_rate == 1e-4  # YAML over the recipe's 2e-4
    assert config.lora_rank == 16 and config.lora_alpha == 8  # YAML rank, recipe ratio 0.5
    assert config.num_crops == 4  # command line over YAML
    assert config.max_length == 4096  # None on the command line means "not given"
    assert (config.num_train_epochs, config.batch_size, config.bf16) == (2, 64, True)  # recipe
    assert config.wd == 0.01  # default


def test_recipe_with_command_line_overrides():
    config = load_config(None, "hateful-memes-lora", {"lora_rank": 8, "output_dir": "runs/hm"})
    assert (config.method, config.lora_rank, config.lora_alpha) == ("lora", 8, 16)  # ratio 2
    assert str(config.output_dir) == "runs/hm"
    # a later layer's precision replaces the recipe's, so a bf16 recipe runs on a CPU in fp32
    assert load_config(None, "docvqa-full", {"fp32": True}).precision == "fp32"
    assert load_config(None, "docvqa-full-fp16", {"bf16": True}).precision == "bf16"


def test_attention_choice_of_a_later_layer_wins(tmp_path):
    path = write(tmp_path, "attn: eager\n")
    config = load_config(path, None, {"use_flash_attention": True})
    assert (config.attn, config.precision) == ("flash_attention_2", "bf16")
    path = write(tmp_path, "use_flash_attention: true\n")
    assert load_config(path, None, {"attn": "sdpa"}).attn == "sdpa"


def test_conflict_within_one_layer_is_an_error(tmp_path):
    path = write(tmp_path, "bf16: true\nfp32: true\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert problems(excinfo) == ["bf16 and fp32 are both set; choose one precision"]


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "learning_rte: 1e-4\nbatch_size: 32\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert problems(excinfo) == [
        f"{path}: unknown key 'learning_rte' (did you mean 'learning_rate'?)"
    ]


def test_every_problem_once_with_its_origin(tmp_path):
    path = write(tmp_path, "num-crops: 4\nnum_crops: 20\nattn: flash\nlora_rank: 0\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, "ucf101-lora", {"batch_size": "many", "lr": 1.0})
    assert problems(excinfo) == [
        f"{path}: unknown key 'num-crops' (did you mean 'num_crops'?)",
        "--lr: not an option",
        "--batch_size: must be a whole number, got 'many'",
        f"{path}: num_crops: must be between 1 and 16, as the Cookbook scripts require, got 20",
        f"{path}: lora_rank: must be at least 1, got 0",
        f"{path}: attn: must be one of 'sdpa', 'flash_attention_2' or 'eager', got 'flash'",
    ]


def test_bad_recipe_value_names_the_recipe():
    with pytest.raises(ConfigError, match=r"^--num_crops: must be between 1 and 16"):
        load_config(None, "docvqa-full", {"num_crops": 32})


def test_unknown_recipe_lists_the_names():
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, "docvqa-lroa")
    (line,) = problems(excinfo)
    assert line.startswith("unknown recipe 'docvqa-lroa' (did you mean 'docvqa-lora'?); recipes: ")
    assert "hateful-memes-full" in line and "ucf101-lora" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\n", r"invalid YAML at line \d+"),
        ("- 1\n- 2\n", "expected 'setting: value' lines, got a list"),
    ],
)
def test_unreadable_yaml(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_missing_and_empty_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")
    assert load_config(write(tmp_path, "# nothing yet\n")) == TrainConfig()


def test_lora_settings_without_lora_are_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="phi3v_train.config"):
        config = load_config(None, None, {"lora_rank": 32, "lora_dropout": 0.1})
    assert config.method == "full"
    assert caplog.messages == [
        "lora_dropout, lora_rank has no effect without use_lora or use_qlora"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phi3v_train.config"):
        load_config(None, None, {"lora_rank": 32, "use_qlora": True})
    assert caplog.messages == []


# --- recipes ------------------------------------------------------------------------------


def test_every_recipe_is_a_valid_config():
    recipes = list_recipes()
    assert len({recipe.name for recipe in recipes}) == len(recipes) >= 20
    for recipe in recipes:
        config = load_config(None, recipe.name)
        assert config.method.replace("_", "-") in recipe.name
        assert config.precision in ("bf16", "fp16")
        if recipe.name.endswith("-fp16"):
            assert config.precision == "fp16"
        if recipe.reference is not None:
            assert (config.batch_size, config.num_crops) == (64, 16)


@pytest.mark.parametrize(
    ("name", "expected", "metric", "score"),
    [
        ("docvqa-full", dict(learning_rate=5e-6, num_train_epochs=2, bf16=True), "anls", 83.65),
        ("docvqa-frozen-vision-fp16", dict(learning_rate=1e-4, bf16=False), "anls", 78.74),
        ("docvqa-lora", dict(learning_rate=2e-4, lora_rank=32, lora_alpha=16), "anls", 82.46),
        ("docvqa-qlora", dict(use_lora=True, lora_rank=32, lora_alpha=16), "anls", 81.85),
        ("hateful-memes-full", dict(learning_rate=5e-5, num_train_epochs=2), "accuracy", 86.4),
        ("hateful-memes-frozen-vision", dict(learning_rate=1e-4, num_train_epochs=3), None, 79.4),
        ("hateful-memes-lora", dict(lora_rank=128, lora_alpha=256), "accuracy", 86.6),
        ("hateful-memes-qlora-fp16", dict(lora_rank=128, bf16=False), "accuracy", 83.8),
        ("nlvr2-full", dict(learning_rate=1e-5, num_train_epochs=3), "accuracy", 89.40),
        ("nlvr2-frozen-vision", dict(learning_rate=2e-5, freeze_vision_model=True), None, 89.20),
    ],
)
def test_recipes_carry_the_published_rows(name, expected, metric, score):
    recipe = get_recipe(name)
    config = recipe.config()
    assert {key: getattr(config, key) for key in expected} == expected
    assert recipe.reference is not None and recipe.reference.value == score
    assert metric is None or recipe.reference.metric == metric
    assert "FineTuning_Vision.md" in recipe.reference.source


def test_phi3_vision_rows_say_so():
    assert get_recipe("docvqa-full").reference.model == "Phi-3-vision-128k-instruct"
    assert get_recipe("hateful-memes-lora").reference.model == "Phi-3-vision-128k-instruct"
    assert get_recipe("nlvr2-full").reference.model == "Phi-3.5-vision-instruct"


def test_ucf101_recipes_are_the_script_defaults():
    full, lora = get_recipe("ucf101-full").config(), get_recipe("ucf101-lora").config()
    assert (full.method, full.num_crops, full.learning_rate, full.batch_size) == (
        "full",
        4,
        4e-5,
        16,
    )
    assert (lora.method, lora.lora_rank, lora.lora_alpha) == ("lora", 64, 128)
    assert get_recipe("ucf101-lora").reference is None


def test_get_recipe_returns_a_copy():
    get_recipe("docvqa-lora").settings["learning_rate"] = 1.0
    assert get_recipe("docvqa-lora").settings["learning_rate"] == 2e-4


def test_unknown_recipe_error():
    with pytest.raises(UnknownRecipeError, match="recipes: docvqa-full, "):
        get_recipe("imagenet-full")


def test_a_recipe_with_bad_settings_fails_where_it_is_defined():
    with pytest.raises(ValidationError, match="num_crops"):
        Recipe(name="bad", description="too many crops", settings={"num_crops": 64})
    with pytest.raises(ValidationError, match="lerning_rate"):
        Recipe(name="bad", description="typo", settings={"lerning_rate": 1e-4})


# --- phi3v-train recipes ------------------------------------------------------------------


def test_recipes_command_lists_every_recipe():
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["NAME", "METHOD", "PRECISION"]
    assert len(lines) == 1 + len(list_recipes())
    row = next(line.split() for line in lines if line.startswith("docvqa-lora "))
    assert row[:8] == ["docvqa-lora", "lora", "bf16", "2e-4", "2", "64", "16", "r32/a16"]
    assert " ".join(row[8:]) == "ANLS 82.46 (Phi-3-vision-128k-instruct)"


def test_recipes_show_prints_a_usable_config(tmp_path):
    result = CliRunner().invoke(main, ["recipes", "--show", "hateful-memes-qlora"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# hateful-memes-qlora: ")
    assert yaml.safe_load(result.output) == get_recipe("hateful-memes-qlora").settings
    path = write(tmp_path, result.output)
    assert load_config(path) == load_config(None, "hateful-memes-qlora")


def test_recipes_show_unknown_name():
    result = CliRunner().invoke(main, ["recipes", "--show", "docvqa-lroa"])
    assert result.exit_code == 2
    assert "unknown recipe 'docvqa-lroa' (did you mean 'docvqa-lora'?)" in result.output
