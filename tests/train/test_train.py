"""End-to-end training on CPU with the tiny checkpoint: every method, checkpoints, resume,
SIGTERM, refusal of bad data, a memorisation run and a Cookbook command.

Runs use ``num_crops=1``, one small image per sample and a few optimizer steps, so the
whole file stays well under two minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import TrainerCallback

from phi3v_data import Sample, validate
from phi3v_train.cli import main
from phi3v_train.config import ConfigError, TrainConfig
from phi3v_train.methods import vision_parameters
from phi3v_train.modeling import Phi3VForCausalLM
from phi3v_train.train import (
    EXIT_SIGTERM,
    Environment,
    checkpoint_problem,
    train,
    training_arguments,
    vision_may_go_unused,
)
from tests.conftest import REPO
from tests.train.tiny_layout import text_sample, write_jsonl, write_layout

TINY = REPO / "fixtures" / "tiny-phi3v"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")


def settings(data_dir: Path, output_dir: Path, **overrides: Any) -> TrainConfig:
    """A small, fast, deterministic run; ``overrides`` change one thing at a time."""
    values: dict[str, Any] = {
        "model_name_or_path": str(TINY),
        "data_dir": data_dir,
        "output_dir": output_dir,
        "num_crops": 1,
        "batch_size": 1,
        "max_steps": 4,
        "save_steps": 2,
        "warmup_steps": 0,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        "eval": "none",
        "tqdm": False,
        "lora_rank": 4,
    }
    values.update(overrides)
    return TrainConfig(**values)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, [str(arg) for arg in args])


class OptimizerSpy(TrainerCallback):
    """Records which parameters the optimizer was given."""

    def __init__(self) -> None:
        self.optimized: set[int] = set()
        self.vision: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.vision = {id(p) for p in vision_parameters(model).values()}


# --- the Cookbook's TrainingArguments ---------------------------------------------------------
CPU_ONLY = Environment(world_size=1, local_rank=0, on_gpu=False)


def test_training_arguments_are_the_cookbooks(tmp_path):
    config = TrainConfig(output_dir=tmp_path, batch_size=16, batch_size_per_gpu=2)
    args = training_arguments(config, precision="fp32", env=CPU_ONLY, find_unused_parameters=False)
    assert (args.optim, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (
        "adamw_torch",
        0.9,
        0.95,
        1e-7,
    )
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == (4e-5, 0.01, 1.0)
    assert (args.lr_scheduler_type, args.warmup_steps, args.logging_steps) == ("linear", 50, 10)
    assert args.gradient_accumulation_steps == 8 and args.per_device_train_batch_size == 2
    checkpointing = getattr(args, "activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = args.gradient_checkpointing
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or (
        args.gradient_checkpointing_kwargs
    )
    assert checkpointing and kwargs == {"use_reentrant": False}
    assert not args.remove_unused_columns and not args.ddp_find_unused_parameters
    assert args.dataloader_num_workers == 4 and args.dataloader_prefetch_factor == 2
    assert not args.save_only_model and args.save_steps == 100  # checkpoints resume fully
    assert args.deepspeed is None  # plain PyTorch on CPU, ZeRO-2 only on GPU


def test_a_batch_size_the_processes_cannot_share_is_one_line(tmp_path):
    config = TrainConfig(output_dir=tmp_path, batch_size=16)
    three = Environment(world_size=3, local_rank=0, on_gpu=False)
    with pytest.raises(ConfigError) as error:
        training_arguments(config, precision="fp32", env=three, find_unused_parameters=False)
    (line,) = error.value.problems
    assert "batch_size 16 is not divisible" in line and "3 process(es)" in line


def test_ddp_looks_for_unused_parameters_only_when_vision_can_go_unused():
    with_image = Sample.model_validate(
        {
            "id": "a",
            "source": "t",
            "conversations": [{"images": ["x.jpg"], "user": "?", "assistant": "!"}],
        }
    )
    text_only = Sample.model_validate(
        {"id": "b", "source": "t", "conversations": [{"user": "?", "assistant": "!"}]}
    )
    assert not vision_may_go_unused(TrainConfig(), [with_image])
    assert vision_may_go_unused(TrainConfig(), [with_image, text_only])
    assert not vision_may_go_unused(TrainConfig(freeze_vision_model=True), [text_only])


# --- one uninterrupted run and one resumed run per method ----------------------------------------
METHODS = {
    "full": {},
    "frozen_vision": {"freeze_vision_model": True},
    "lora": {"use_lora": True},
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("layout"), train=3, val=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, layout) -> dict[str, dict[str, Any]]:
    """Per method: run A, 4 steps with checkpoints at 2 and 4; run B, resumed from A's
    checkpoint-2 (copied, with a half-written checkpoint-3 beside it) up to step 4."""
    results: dict[str, dict[str, Any]] = {}
    for method, extra in METHODS.items():
        root = tmp_path_factory.mktemp(method)
        spy = OptimizerSpy()
        a = train(settings(layout, root / "a", **extra), callbacks=[spy])
        b_dir = root / "b"
        b_dir.mkdir()
        shutil.copytree(root / "a" / "checkpoint-2", b_dir / "checkpoint-2")
        killed = b_dir / "checkpoint-3"  # a kill while saving: weights written, no state
        killed.mkdir()
        for name in ("config.json", "model.safetensors", "adapter_model.safetensors"):
            if (root / "a" / "checkpoint-2" / name).exists():
                shutil.copy(root / "a" / "checkpoint-2" / name, killed / name)
        b = train(settings(layout, b_dir, resume=True, **extra))
        results[method] = {"a": a, "b": b, "root": root, "spy": spy}
    return results


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_checkpoints(runs, method):
    run = runs[method]
    summary, out = run["a"], run["root"] / "a"
    assert summary["method"] == method and summary["global_step"] == 4
    assert summary["precision"] == "fp32" and not summary["stopped_by_signal"]
    for step in (2, 4):  # every save_steps and at the end
        assert checkpoint_problem(out / f"checkpoint-{step}") is None
    for name in PROCESSOR_FILES:  # the output folder is loadable on its own
        assert (out / name).is_file()


@pytest.mark.parametrize("method", METHODS)
def test_resume_continues_with_the_same_step_schedule_and_optimizer_state(runs, method, caplog):
    run = runs[method]
    a, b = run["root"] / "a" / "checkpoint-4", run["root"] / "b" / "checkpoint-4"
    assert run["b"]["resumed_from"] == str(run["root"] / "b" / "checkpoint-2")
    assert run["b"]["global_step"] == 4
    state = json.loads((b / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    optimizer_a = torch.load(a / "optimizer.pt", weights_only=False)
    optimizer_b = torch.load(b / "optimizer.pt", weights_only=False)
    assert optimizer_a["state"].keys() == optimizer_b["state"].keys()
    for index, tensors in optimizer_a["state"].items():
        for key, value in tensors.items():
            torch.testing.assert_close(optimizer_b["state"][index][key], value)
    groups_a = [{k: v for k, v in g.items() if k != "params"} for g in optimizer_a["param_groups"]]
    groups_b = [{k: v for k, v in g.items() if k != "params"} for g in optimizer_b["param_groups"]]
    assert groups_a == groups_b
    scheduler_a = torch.load(a / "scheduler.pt", weights_only=False)
    scheduler_b = torch.load(b / "scheduler.pt", weights_only=False)
    assert scheduler_a == scheduler_b and scheduler_b["last_epoch"] == 4
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    for name, tensor in load_file(a / weights).items():
        torch.testing.assert_close(load_file(b / weights)[name], tensor)


def test_resume_skips_a_half_written_checkpoint(runs):
    killed = runs["full"]["root"] / "b" / "checkpoint-3"
    assert checkpoint_problem(killed) == "no trainer_state.json"
    assert runs["full"]["b"]["resumed_from"].endswith("checkpoint-2")


def test_frozen_vision_has_no_optimizer_state_and_unchanged_weights(runs):
    spy = runs["frozen_vision"]["spy"]
    assert spy.vision and spy.optimized and not (spy.vision & spy.optimized)
    trained = load_file(runs["frozen_vision"]["root"] / "a" / "model.safetensors")
    original = load_file(TINY / "model.safetensors")
    vision = [name for name in original if "vision_embed_tokens" in name]
    for name in vision:
        torch.testing.assert_close(trained[name], original[name].float(), rtol=0, atol=0)
    assert not torch.equal(trained["lm_head.weight"], original["lm_head.weight"])
    full_spy = runs["full"]["spy"]
    assert full_spy.vision & full_spy.optimized  # the check can fail


def test_full_fine_tuning_saves_the_official_layout(runs):
    out = runs["full"]["root"] / "a"
    assert json.loads((out / "config.json").read_text())["model_type"] == "phi3_v"
    model = Phi3VForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = load_file(TINY / "model.safetensors")
    assert set(load_file(out / "model.safetensors")) == set(original)
    assert not torch.equal(model.lm_head.weight, original["lm_head.weight"])


def test_lora_saves_a_peft_adapter_that_loads_on_the_base(runs, processor):
    from peft import PeftModel

    out = runs["lora"]["root"] / "a"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["base_model_name_or_path"] == str(TINY)
    assert adapter["r"] == 4 and adapter["init_lora_weights"] == "gaussian"
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # adapters only
    assert not (out / "model.safetensors").exists()
    base = Phi3VForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
    ids = torch.tensor([processor.tokenize("Which class?", add_bos=True)])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, out)(input_ids=ids).logits
    assert not torch.allclose(before, tuned)


def test_an_output_dir_with_checkpoints_needs_resume(runs, layout):
    with pytest.raises(ConfigError, match=r"already holds checkpoints .* pass --resume"):
        train(settings(layout, runs["full"]["root"] / "a"))


def test_qlora_trains_on_this_cpu(layout, tmp_path):
    summary = train(settings(layout, tmp_path, use_qlora=True, max_steps=2, save_steps=0))
    assert summary["method"] == "qlora" and summary["global_step"] == 2
    assert checkpoint_problem(tmp_path / "checkpoint-2") is None  # the end is always saved
    assert (tmp_path / "adapter_model.safetensors").is_file()


# --- the command line ----------------------------------------------------------------------------
def test_bad_data_is_refused_with_validates_messages_and_exit_1(tmp_path):
    write_layout(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "ucf101_train.jsonl").open()]
    lines[0]["conversations"][0]["images"] = ["train/Archery/gone.jpg"]
    lines[1]["conversations"][0]["user"] = "<|image_2|> which class?"
    write_jsonl(tmp_path / "ucf101_train.jsonl", lines)
    result = invoke(
        "--model_name_or_path", TINY, "--data_dir", tmp_path, "--output_dir", tmp_path / "out"
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    report = validate([tmp_path / "ucf101_train.jsonl", tmp_path / "ucf101_val.jsonl"])
    assert len(report.errors) == 2
    for problem in report.errors:
        assert str(problem) in result.output
    assert not (tmp_path / "out").exists()  # refused before anything else


def test_overlong_policy_on_the_command_line(tmp_path):
    write_layout(tmp_path, train=2, val=0)
    long = json.loads((tmp_path / "ucf101_train.jsonl").read_text().splitlines()[1])
    long["conversations"][0]["user"] += " Think it over carefully." * 20
    short = json.loads((tmp_path / "ucf101_train.jsonl").read_text().splitlines()[0])
    write_jsonl(tmp_path / "ucf101_train.jsonl", [short, long])
    lengths = validate([tmp_path / "ucf101_train.jsonl"], num_crops=1, tokenizer=TINY).lengths
    limit = str(min(length.total for length in lengths) + 5)
    common = [
        "--model_name_or_path",
        TINY,
        "--data_dir",
        tmp_path,
        "--num_crops",
        "1",
        "--max_length",
        limit,
        "--batch_size",
        "1",
        "--max_steps",
        "1",
        "--no-tqdm",
        "--dataloader_num_workers",
        "0",
    ]
    refused = invoke(*common, "--output_dir", tmp_path / "a")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert f"exceeds --max-length {int(limit):,}" in refused.output
    assert "--overlong drop" in refused.output
    dropped = invoke(*common, "--output_dir", tmp_path / "b", "--overlong", "drop")
    assert dropped.exit_code == 0, dropped.output
    assert "dropped 1 train sample(s)" in dropped.output
    assert f"dropped over max_length {int(limit):,}: 1 train" in dropped.output
    assert "samples: 1 train" in dropped.output


def test_config_file_recipe_and_flags_layer_in_order(tmp_path, monkeypatch):
    seen: list[TrainConfig] = []
    monkeypatch.setattr(
        "phi3v_train.train.train",
        lambda config: seen.append(config) or {"stopped_by_signal": False},
    )
    monkeypatch.setattr("phi3v_train.train.format_summary", lambda summary: ["ok"])
    config_file = tmp_path / "run.yaml"
    config_file.write_text("num_crops: 2\nmax_steps: 3\nlearning_rate: 1.0e-4\n")
    result = invoke(
        "--recipe",
        "ucf101-lora",
        "--config",
        config_file,
        "--max-steps",
        "5",
        "--no-use_lora",
        "--data_dir",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.num_crops, config.max_steps, config.learning_rate) == (2, 5, 1e-4)
    assert config.method == "full" and config.batch_size == 16  # recipe, then the flag
    train_result = invoke("train", "--data_dir", tmp_path, "--use-lora", "--no-tqdm")
    assert train_result.exit_code == 0 and seen[-1].use_lora and not seen[-1].tqdm


def test_setting_mistakes_are_one_line_each_with_exit_2(tmp_path):
    result = invoke("--data_dir", tmp_path, "--num_crops", "20", "--lora_rank", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--num_crops: must be between 1 and 16" in result.output
    assert "--lora_rank: must be at least 1" in result.output
    unknown = invoke("--data_dir", tmp_path, "--use_lorra")
    assert unknown.exit_code == 2 and "--use_lorra" in unknown.output


def test_other_subcommands_still_work_beside_the_default():
    assert invoke("recipes").exit_code == 0
    assert "docvqa-lora" in invoke("recipes").output
    assert "--use_lora" in invoke("train", "--help").output
    assert "train" in invoke("--help").output


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run(
        [sys.executable, "-m", "phi3v_train", "recipes"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0 and "ucf101-lora" in done.stdout


def test_a_cookbook_command_runs_with_only_the_program_name_changed(tmp_path, monkeypatch):
    """The recipe page's UCF-101 command, ``torchrun --nproc_per_node=4
    finetune_hf_trainer_ucf101.py --data_dir DIR``, with the program name changed (plus the
    Cookbook's own --model_name_or_path: there is no network here): Cookbook defaults
    throughout (full fine-tuning, batch 16, 4 crops, 4 dataloader workers, fp16, evaluation
    before and after)."""
    data = write_layout(tmp_path / "converted_ucf101", train=2, val=1)
    monkeypatch.chdir(tmp_path)  # the Cookbook's default --output_dir is relative
    result = invoke("--data_dir", data, "--model_name_or_path", TINY)
    assert result.exit_code == 0, result.output
    out = tmp_path / "output"
    assert "fp16 mixed precision needs a GPU: training in fp32 on CPU" in result.output
    assert "method: full, precision: fp32" in result.output
    assert "steps: 1 of 1" in result.output  # 2 samples, accumulation 16: one optimizer step
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-1").is_dir()
    for name in ("eval_before_metrics.json", "eval_after_metrics.json"):
        assert (out / name).is_file()


def test_a_cookbook_lora_command_with_flash_attention_never_crashes(tmp_path):
    """``--use_lora --use_flash_attention --bf16`` (the A100 command) on CPU: flash attention
    becomes SDPA with one notice; bf16 autocast runs on CPU."""
    data = write_layout(tmp_path / "data", train=2, val=0)
    result = invoke(
        "--data_dir",
        data,
        "--model_name_or_path",
        TINY,
        "--output_dir",
        tmp_path / "out",
        "--batch_size",
        "2",
        "--num_crops",
        "1",
        "--use_lora",
        "--lora_rank",
        "4",
        "--use_flash_attention",
        "--bf16",
        "--no-tqdm",
    )
    assert result.exit_code == 0, result.output
    assert "flash_attention_2 needs a CUDA GPU; using sdpa instead" in result.output
    assert "method: lora, precision: bf16, attention: sdpa" in result.output


# --- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    # more samples than steps: one epoch, so the dataloader worker is never re-created
    data = write_layout(tmp_path / "data", train=8, val=0)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-u",
        "-m",
        "phi3v_train",
        "--model_name_or_path",
        TINY,
        "--data_dir",
        data,
        "--output_dir",
        out,
        "--num_crops",
        "1",
        "--batch_size",
        "1",
        "--max_steps",
        "6",
        "--save_steps",
        "0",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--eval",
        "none",
        "--no-tqdm",
        "--dataloader_num_workers",
        "1",
    ]
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a job scheduler would see it
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = []
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if "'loss'" in line:  # training is under way: stop it as a scheduler would
            os.killpg(process.pid, signal.SIGTERM)  # main process and dataloader worker
            break
    rest, _ = process.communicate(timeout=120)
    text = "".join(output) + rest
    assert process.returncode == EXIT_SIGTERM, text
    assert "Traceback" not in text and "stopped by SIGTERM; checkpoint written" in text, text
    (checkpoint,) = sorted(out.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 6 and checkpoint_problem(checkpoint) is None, text
    assert not (out / "model.safetensors").exists()  # the run did not finish
    summary = train(settings(data, out, max_steps=6, save_steps=0, resume=True))
    assert summary["resumed_from"] == str(checkpoint)
    assert summary["global_step"] == 6 and (out / "model.safetensors").is_file()
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged == list(range(1, 7))


# --- learning ------------------------------------------------------------------------------------
def test_loss_falls_on_a_tiny_memorisation_run(tmp_path):
    facts = [
        ("Colour of the sky?", "blue"),
        ("Colour of grass?", "green"),
        ("Colour of snow?", "white"),
        ("Colour of coal?", "black"),
    ]
    (tmp_path / "images").mkdir()
    write_jsonl(
        tmp_path / "facts_train.jsonl", [text_sample(i, q, a) for i, (q, a) in enumerate(facts)]
    )
    summary = train(
        settings(
            tmp_path,
            tmp_path / "out",
            batch_size=4,
            batch_size_per_gpu=4,
            max_steps=12,
            save_steps=0,
            learning_rate=3e-2,
            lr_scheduler_type="constant",
            gradient_checkpointing=False,
        )
    )
    state = json.loads((tmp_path / "out" / "checkpoint-12" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 12
    assert losses[-1] < 0.3 * losses[0], losses
    assert summary["last_loss"] == losses[-1]
