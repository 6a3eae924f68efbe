"""``train(config)``: the Cookbook's training flow on transformers' Trainer, plus what it lacks.

The flow is the Cookbook's (``reference/datasets.md`` §1.1): load, optionally evaluate the
base model, apply the method, train with its hard-coded TrainingArguments, save the model
and the processor, evaluate again. The Trainer brings DDP under torchrun, DeepSpeed,
``report_to`` and checkpoints with optimizer, scheduler and RNG state. Added here:

* data is checked by ``phi3v_data.validate`` before anything else (:mod:`phi3v_train.data`);
* checkpoints every ``save_steps`` and at the end; ``resume`` continues from the newest
  *complete* checkpoint (a folder half-written by a kill is skipped); a run without
  ``resume`` refuses an output_dir that already holds checkpoints rather than rotating
  them away;
* SIGTERM (preemption, ``scancel``, Kubernetes) finishes the current optimizer step,
  writes a checkpoint and stops; all ranks agree on the step, so DDP never deadlocks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from phi3v_data.schema import Sample
from phi3v_train.config import ConfigError, TrainConfig
from phi3v_train.data import (
    CheckedData,
    Collator,
    DataFiles,
    LayoutDataset,
    check_data,
    context_length,
    find_data_files,
)
from phi3v_train.methods import (
    MethodError,
    apply_method,
    count_parameters,
    load_model,
    resolve_attention,
    resolve_precision,
)
from phi3v_train.processing import (
    PREPROCESSOR_FILE,
    TOKENIZER_FILES,
    Phi3VProcessor,
    resolve_model_dir,
)

logger = logging.getLogger(__name__)

EXIT_SIGTERM = 128 + signal.SIGTERM  # the shell's status for "terminated by SIGTERM"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


# --- checkpoints ---------------------------------------------------------------------------------
def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint a run can resume from, or None if it is complete.

    The Trainer writes weights, optimizer, scheduler and RNG state, and ``trainer_state.json``
    last; a kill in between leaves a folder without it, or without one of the others.
    """
    match = CHECKPOINT_DIR.match(path.name)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable trainer_state.json"
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json says step {state.get('global_step')}"
    if not _has_weights(path):
        return "no model or adapter weights"
    deepspeed = (path / "latest").is_file()
    if not (path / "optimizer.pt").is_file() and not deepspeed:
        return "no optimizer state"
    if not (path / "scheduler.pt").is_file() and not deepspeed:
        return "no scheduler state"
    return None


def _has_weights(path: Path) -> bool:
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return True
    for name in WEIGHT_INDEXES:
        index = path / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return False
            return all((path / shard).is_file() for shard in shards)
    return False


def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_DIR.match(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are named in a notice."""
    for path in list_checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s (%s)", path, problem)
    return None


# --- SIGTERM and the final checkpoint ------------------------------------------------------------
class CheckpointControl(TrainerCallback):
    """Save at the end of training, and save then stop once SIGTERM has been received.

    The signal handler only sets a flag; the checkpoint is written after the current
    optimizer step, so resuming from it is exact. Under DDP the ranks agree on the flag
    (one tiny all-reduce per step), so they all save and stop at the same step.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def request_stop(self, signum: int, frame: Any) -> None:
        """Signal handler: remember the request; the training loop acts on it."""
        self.requested = True

    def _agreed(self, args: TrainingArguments) -> bool:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.requested
        flag = torch.tensor([int(self.requested)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_save = True  # the final checkpoint, whatever save_steps is
        if self._agreed(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


@contextmanager
def stop_on_sigterm(callback: CheckpointControl) -> Iterator[None]:
    """Route SIGTERM to ``callback`` while training; the previous handler afterwards."""
    try:
        previous = signal.signal(signal.SIGTERM, callback.request_stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _IgnoreSigterm:
    """Dataloader worker init: the Trainer's own (seeding), then ignore SIGTERM.

    torch's workers die on SIGTERM, and the main process then fails with "DataLoader worker
    is killed by signal". A scheduler (``scancel``, Ctrl-C in a terminal) signals the whole
    process group, so workers must survive long enough for the checkpoint; they exit when
    the main process shuts the loader down, or when it dies.
    """

    def __init__(self, init: Any) -> None:
        self.init = init

    def __call__(self, worker_id: int) -> None:
        if self.init is not None:
            self.init(worker_id)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Phi3VTrainer(Trainer):
    """The transformers Trainer with dataloader workers that outlive a SIGTERM."""

    def get_train_dataloader(self) -> Any:
        loader = super().get_train_dataloader()
        # accelerate wraps the torch DataLoader (``base_dataloader``) and iterates that one
        torch_loader = getattr(loader, "base_dataloader", loader)
        if torch_loader.num_workers:
            torch_loader.worker_init_fn = _IgnoreSigterm(torch_loader.worker_init_fn)
        return loader


# --- the run -------------------------------------------------------------------------------------
@dataclass
class Environment:
    """Where the run executes: number of processes, this one's local rank, GPU or CPU."""

    world_size: int
    local_rank: int
    on_gpu: bool

    @classmethod
    def detect(cls) -> Environment:
        return cls(
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            on_gpu=torch.cuda.is_available(),
        )

    @property
    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if self.on_gpu else torch.device("cpu")


def training_arguments(
    config: TrainConfig,
    *,
    precision: str,
    env: Environment,
    find_unused_parameters: bool,
) -> TrainingArguments:
    """The Cookbook's hard-coded TrainingArguments, with our checkpoint settings."""
    accumulation = config.gradient_accumulation_steps(env.world_size)
    deepspeed = config.deepspeed_config(on_gpu=env.on_gpu)
    if deepspeed is not None:
        _require("deepspeed", "DeepSpeed (full fine-tuning on GPU)", "--deepspeed none")
        _single_process_group()
    if config.report_to != "none":
        _require(config.report_to, f"--report_to {config.report_to}", "--report_to none")
    workers = config.dataloader_num_workers
    return TrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.batch_size_per_gpu,
        per_device_eval_batch_size=config.batch_size_per_gpu,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.wd,
        optim="adamw_torch",
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        logging_steps=config.logging_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not env.on_gpu,
        **_checkpointing_arguments(config.gradient_checkpointing),
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        save_only_model=False,  # resume needs optimizer, scheduler and RNG state
        remove_unused_columns=False,
        report_to=config.report_to,
        dataloader_num_workers=workers,
        dataloader_prefetch_factor=2 if workers else None,
        ddp_find_unused_parameters=find_unused_parameters,
        disable_tqdm=not config.tqdm,
        seed=config.seed,
        deepspeed=deepspeed,
    )


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Gradient checkpointing without reentrant autograd (the Cookbook: "important for LoRA").

    transformers 5.2x renamed the arguments to ``activation_checkpointing``; older 5.x only
    know ``gradient_checkpointing``.
    """
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": enabled,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
    }


def _single_process_group() -> None:
    """Let DeepSpeed start without a launcher: ``python -m phi3v_train`` on one GPU.

    DeepSpeed always initialises torch.distributed; torchrun sets these variables, a plain
    run does not (transformers' DeepSpeed docs give the same recipe for notebooks).
    """
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:  # a free port for the one-process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        os.environ.setdefault(name, value)


def _require(module: str, what: str, alternative: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MethodError(
            f"{what} needs the {module} package: pip install {module}, or {alternative}"
        )


def vision_may_go_unused(config: TrainConfig, samples: Sequence[Sample]) -> bool:
    """True when trained vision weights can miss a batch (a sample without images): DDP must
    then look for unused parameters, which the Cookbook turns off."""
    trains_vision = not config.freeze_vision_model
    return trains_vision and any(not sample.image_paths() for sample in samples)


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train as ``config`` says and return the run's summary (see :func:`format_summary`).

    Raises :class:`phi3v_train.data.DataError` for data that ``validate`` rejects,
    :class:`~phi3v_train.config.ConfigError` and :class:`~phi3v_train.methods.MethodError`
    for settings this run or machine cannot use. ``summary["stopped_by_signal"]`` is True
    when SIGTERM ended the run after writing a checkpoint.
    """
    started = time.monotonic()
    env = Environment.detect()
    files = find_data_files(
        config.data_dir, config.train_file, config.eval_file, want_eval=config.eval != "none"
    )
    model_dir = resolve_model_dir(
        config.model_name_or_path, [*TOKENIZER_FILES, PREPROCESSOR_FILE, "config.json"]
    )
    if files.eval is None and "eval" in config.model_fields_set and config.eval != "none":
        raise ConfigError(
            [f"--eval {config.eval}: no evaluation file (*_val.jsonl or --eval_file)"]
        )
    data = check_data(
        files,
        tokenizer_dir=model_dir,
        num_crops=config.num_crops,
        max_length=config.max_length or context_length(model_dir),
        overlong=config.overlong,
    )
    resume_from = _resume_point(config)
    processor = Phi3VProcessor.from_pretrained(model_dir, num_crops=config.num_crops)
    precision = resolve_precision(config.precision, env.on_gpu)
    attn = resolve_attention(config.attn, precision, env.device)
    args = training_arguments(
        config,
        precision=precision,
        env=env,
        find_unused_parameters=vision_may_go_unused(config, data.train),
    )
    set_seed(config.seed)  # LoRA's gaussian init draws from the global generator
    base_name = _base_name(config.model_name_or_path)
    model = load_model(
        base_name, method=config.method, precision=precision, attn=attn, device=args.device
    )
    model = apply_method(model, config, base_name=base_name)
    trainable, total = count_parameters(model)
    summary: dict[str, Any] = {
        "method": config.method,
        "precision": precision,
        "attn": model.config._attn_implementation,
        "train_samples": len(data.train),
        "eval_samples": len(data.eval),
        "dropped_overlong": data.dropped_counts,
        "max_length": data.max_length,
        "world_size": env.world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "resumed_from": str(resume_from) if resume_from else None,
        "output_dir": str(config.output_dir),
    }
    logger.info("%s", " | ".join(format_plan(summary)))
    if config.eval_before and resume_from is None:
        if not getattr(model, "is_loaded_in_4bit", False):
            model.to(args.device)
        summary["eval_before"] = _evaluate(model, processor, data, files, config, "eval_before")
    control = CheckpointControl()
    trainer = Phi3VTrainer(
        model=model,
        args=args,
        data_collator=Collator(processor),
        train_dataset=LayoutDataset(data.train, files.train_images, processor),
        callbacks=[control, *callbacks],
    )
    with stop_on_sigterm(control):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary |= {
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "mean_loss": result.training_loss,  # over the steps this process ran
        "last_loss": losses[-1] if losses else None,
        "stopped_by_signal": control.stopped_at is not None,
    }
    if control.stopped_at is not None:
        summary["checkpoint"] = str(config.output_dir / f"checkpoint-{control.stopped_at}")
    else:
        trainer.save_model(str(config.output_dir))
        if trainer.args.should_save:
            processor.save_pretrained(config.output_dir)
        if config.eval_after:
            summary["eval_after"] = _evaluate(
                trainer.model, processor, data, files, config, "eval_after"
            )
    summary["runtime_s"] = round(time.monotonic() - started, 1)
    return summary


def _base_name(name_or_path: str) -> str:
    """An absolute path for a local model folder (adapters record it), a hub id unchanged."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_dir() else name_or_path


def _resume_point(config: TrainConfig) -> Path | None:
    """The checkpoint to continue from, or None to start at step 0.

    Without ``--resume`` an output_dir that holds checkpoints is refused: training over it
    would rotate the old checkpoints away.
    """
    if config.resume:
        found = latest_complete_checkpoint(config.output_dir)
        if found is None:
            logger.warning(
                "--resume: no complete checkpoint in %s; starting at step 0", config.output_dir
            )
        else:
            logger.info("resuming from %s", found)
        return found
    existing = list_checkpoints(config.output_dir)
    if existing:
        raise ConfigError(
            [
                f"--output_dir {config.output_dir} already holds checkpoints (newest "
                f"{existing[0].name}): pass --resume to continue that run, or choose another "
                "--output_dir"
            ]
        )
    return None


def _evaluate(
    model: torch.nn.Module,
    processor: Phi3VProcessor,
    data: CheckedData,
    files: DataFiles,
    config: TrainConfig,
    name: str,
) -> dict[str, Any] | None:
    """Generate and score on the eval file, as the Cookbook's ``eval_before.json`` and
    ``eval_after.json``: writes ``<output_dir>/<name>_predictions.json`` and ``_metrics.json``.

    Every rank calls it: :func:`phi3v_train.evaluate.run_evaluation` shards the samples
    across ranks and gathers the predictions.
    """
    if files.eval_images is None or not data.eval:
        logger.warning("%s: no evaluation samples; skipped", name)
        return None
    try:
        from phi3v_train.evaluate import run_evaluation
    except ImportError as error:
        if error.name not in ("phi3v_train.evaluate", "phi3v_train"):
            raise
        logger.warning("%s: evaluation is not available in this installation; skipped", name)
        return None
    return run_evaluation(
        model,
        processor,
        data.eval,
        files.eval_images,
        batch_size=config.batch_size_per_gpu,
        max_new_tokens=config.max_new_tokens,
        out_prefix=config.output_dir / name,
        max_samples=config.max_eval_samples,
        progress=config.tqdm,
    )


# --- reporting -----------------------------------------------------------------------------------
def format_plan(summary: dict[str, Any]) -> list[str]:
    """What is about to run, as short phrases (one log line)."""
    dropped = sum(summary["dropped_overlong"].values())
    return [
        f"method {summary['method']}",
        f"precision {summary['precision']}",
        f"attention {summary['attn']}",
        f"{summary['train_samples']:,} train / {summary['eval_samples']:,} eval samples",
        f"{dropped:,} over-long dropped",
        f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters train",
        f"{summary['world_size']} process(es) x accumulation "
        f"{summary['gradient_accumulation_steps']}",
    ]


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The end-of-run summary the CLI prints."""
    dropped = ", ".join(f"{n:,} {split}" for split, n in summary["dropped_overlong"].items())
    steps = f"steps: {summary.get('global_step', 0):,} of {summary.get('max_steps', 0):,}"
    if summary.get("resumed_from"):
        steps += f" (resumed from {summary['resumed_from']})"
    if summary.get("last_loss") is not None:
        steps += f", last logged loss {summary['last_loss']:.4f}"
    elif summary.get("mean_loss") is not None:
        steps += f", mean loss {summary['mean_loss']:.4f}"
    lines = [
        f"method: {summary['method']}, precision: {summary['precision']}, "
        f"attention: {summary['attn']}",
        f"samples: {summary['train_samples']:,} train, {summary['eval_samples']:,} eval; "
        f"dropped over max_length {summary['max_length']:,}: {dropped or '0'}",
        steps,
    ]
    if summary.get("stopped_by_signal"):
        lines.append(
            f"stopped by SIGTERM; checkpoint written: {summary.get('checkpoint')} "
            "(run again with --resume to continue)"
        )
    else:
        lines.append(f"saved to {summary['output_dir']}")
    for name in ("eval_before", "eval_after"):
        if summary.get(name):
            lines.append(f"{name}: {_format_metrics(summary[name])}")
    if "runtime_s" in summary:
        lines.append(f"time: {summary['runtime_s']:.1f} s")
    return lines


def _format_metrics(metrics: dict[str, Any]) -> str:
    """``source metric value`` pairs of an evaluation's metrics document, on one line."""
    parts = [
        f"{source} {name} {value:.4f}" if isinstance(value, float) else f"{source} {name} {value}"
        for source, entry in metrics.get("sources", {}).items()
        for name, value in entry.get("metrics", {}).items()
    ]
    return "; ".join(parts) or "see the metrics file"
