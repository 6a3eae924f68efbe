"""The method matrix: which weights train, in which precision, with which attention kernel.

Four methods, as in the Cookbook scripts (``reference/datasets.md`` §1.1):

* ``full``: every weight trains (DeepSpeed ZeRO-2 on GPU, chosen by the trainer);
* ``frozen_vision``: the vision tower (``model.model.vision_embed_tokens``) gets neither
  gradients nor optimizer state;
* ``lora``: PEFT LoRA on the Cookbook's modules: ``qkv_proj``, ``o_proj``, ``down_proj``,
  ``gate_up_proj``, ``lm_head``, plus, unless the vision tower is frozen, the CLIP
  ``q/k/v/out_proj``, ``fc1``, ``fc2`` and ``img_projection.0/.2``. The CLIP layer after
  the selected one never runs, so it gets no adapter (an adapter there would be an unused
  trainable parameter, which DDP rejects); the Cookbook deletes that layer instead;
* ``qlora``: the same LoRA on a 4-bit nf4 base (bitsandbytes).

Precision. ``bf16`` and ``fp16`` are mixed precision: weights that train are kept in fp32
(autocast computes in half precision; DeepSpeed keeps its own fp32 master copy), while the
frozen base of LoRA is stored in the half type, since it is never updated. ``fp16`` needs a
GPU: on CPU a run asked for fp16 (the Cookbook's default) trains in fp32, with a notice;
``bf16`` autocast works on CPU too. Flash attention runs inside autocast, so it works with
fp16 as well as bf16 (the Cookbook's "flash attention refuses fp16" came from loading
fp32 weights); where flash attention cannot run (no CUDA, flash-attn missing, an older GPU)
the run uses SDPA and says so in one line.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from phi3v_train.config import Method, Precision, TrainConfig
from phi3v_train.modeling import Phi3VForCausalLM

logger = logging.getLogger(__name__)

LANGUAGE_TARGETS = ("qkv_proj", "o_proj", "down_proj", "gate_up_proj", "lm_head")
VISION_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
    "img_projection.0",
    "img_projection.2",
)
VISION_PREFIX = "model.vision_embed_tokens"
DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


class MethodError(RuntimeError):
    """A method, precision or kernel this machine cannot run; the message is one line."""


# --- precision -----------------------------------------------------------------------------------
def resolve_precision(requested: Precision, on_gpu: bool) -> Precision:
    """The precision the run will use: ``requested``, except fp16 on CPU becomes fp32.

    fp16 autocast with loss scaling is a GPU feature; the Cookbook's default (fp16 unless
    ``--bf16``) should still run a CPU smoke test, so it falls back with a notice. bf16 on a
    GPU without bf16 support (V100, T4) is an error: silently emulating it would be slow.
    """
    if requested == "fp16" and not on_gpu:
        logger.warning(
            "fp16 mixed precision needs a GPU: training in fp32 on CPU "
            "(--bf16 for bf16 autocast, --fp32 to silence this)"
        )
        return "fp32"
    if requested == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise MethodError(
            "this GPU has no bf16 support (it needs Ampere or newer); "
            "drop --bf16 to train in fp16 mixed precision"
        )
    return requested


def load_dtype(method: Method, precision: Precision) -> torch.dtype:
    """The dtype weights are loaded in: half for a frozen LoRA base, fp32 for trained weights."""
    if precision != "fp32" and method in ("lora", "qlora"):
        return DTYPES[precision]
    return torch.float32


# --- attention -----------------------------------------------------------------------------------
def resolve_attention(requested: str, precision: Precision, device: torch.device) -> str:
    """``requested``, or ``sdpa`` with a one-line notice where flash attention cannot run.

    A run never crashes over the kernel: SDPA computes the same attention.
    """
    if requested != "flash_attention_2":
        return requested
    reason = _flash_attention_problem(precision, device)
    if reason is None:
        return requested
    logger.warning("flash_attention_2 %s; using sdpa instead", reason)
    return "sdpa"


def _flash_attention_problem(precision: Precision, device: torch.device) -> str | None:
    """Why flash attention cannot run here, or None after a tiny kernel call succeeded."""
    if device.type != "cuda":
        return "needs a CUDA GPU"
    if precision == "fp32":
        return "runs in bf16 or fp16 only"
    if importlib.util.find_spec("flash_attn") is None:
        return "needs the flash-attn package (pip install 'phi3v[flash]')"
    try:
        from flash_attn import flash_attn_func

        probe = torch.zeros(1, 8, 2, 64, device=device, dtype=DTYPES[precision])
        flash_attn_func(probe, probe, probe, causal=True)
    except Exception as error:  # old GPU, ABI mismatch: any failure means "use SDPA"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"cannot run on this GPU ({type(error).__name__}: {first})"
    return None


# --- loading -------------------------------------------------------------------------------------
def quantization_config(precision: Precision, device: torch.device) -> Any:
    """The Cookbook's QLoRA quantization: 4-bit nf4, computing in the run's precision.

    Checks first that bitsandbytes can run a 4-bit nf4 matmul on ``device``, so an
    unsupported machine gets one clear line instead of a failure deep inside loading.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodError("QLoRA needs bitsandbytes: pip install bitsandbytes (or use --use_lora)")
    dtype = DTYPES[precision]
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional

        weight = torch.randn(64, 64, device=device, dtype=dtype)
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", blocksize=64)
        bnb.matmul_4bit(torch.randn(2, 64, device=device, dtype=dtype), packed.t(), state)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MethodError(
            f"QLoRA: bitsandbytes cannot run 4-bit nf4 on this {device.type} ({first}); "
            "use --use_lora instead"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        # lm_head is transformers' default; the image projection (~1% of the weights) stays
        # in the compute dtype because the embedding casts its input to the projection's
        # weight dtype, which is uint8 once quantized
        llm_int8_skip_modules=["lm_head", f"{VISION_PREFIX}.img_projection"],
    )


def load_model(
    name_or_path: str | Path,
    *,
    method: Method,
    precision: Precision,
    attn: str,
    device: torch.device,
) -> Phi3VForCausalLM:
    """Load the checkpoint for ``method``: dtype, attention kernel and (QLoRA) quantization."""
    kwargs: dict[str, Any] = {"dtype": load_dtype(method, precision), "attn_implementation": attn}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(precision, device)
        kwargs["device_map"] = {"": device}  # bitsandbytes quantizes where the weights land
    try:
        return Phi3VForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (ImportError, ValueError) as error:
        if attn != "flash_attention_2":
            raise
        first = str(error).strip().splitlines()[0]
        logger.warning("flash_attention_2 cannot be used (%s); using sdpa instead", first)
        kwargs["attn_implementation"] = "sdpa"
        return Phi3VForCausalLM.from_pretrained(name_or_path, **kwargs)


# --- which weights train -------------------------------------------------------------------------
def freeze_vision(model: Phi3VForCausalLM) -> None:
    """No gradients for the vision tower; the optimizer only receives trainable parameters."""
    model.model.vision_embed_tokens.requires_grad_(False)


def vision_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The vision tower's parameters by name (works on a plain or a PEFT-wrapped model)."""
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if f"{VISION_PREFIX}." in name
    }


def unused_module_names(model: Phi3VForCausalLM) -> list[str]:
    """Names of the linear layers inside the never-run part of the CLIP tower."""
    unused = {id(parameter) for parameter in model.unused_parameters()}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module.weight) in unused
    ]


def lora_config(
    model: Phi3VForCausalLM, *, rank: int, alpha: int, dropout: float, include_vision: bool
) -> Any:
    """The Cookbook's ``create_lora_config`` as a PEFT ``LoraConfig``.

    Targets are the Cookbook's module names; the unused CLIP layer's linears are excluded by
    full name, so every adapter is on a module that runs.
    """
    from peft import LoraConfig

    targets = list(LANGUAGE_TARGETS) + (list(VISION_TARGETS) if include_vision else [])
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        exclude_modules=unused_module_names(model) or None,
        init_lora_weights="gaussian",
    )


def apply_method(
    model: Phi3VForCausalLM, config: TrainConfig, *, base_name: str | None = None
) -> nn.Module:
    """Set up ``model`` for ``config.method``; returns the model to train (PEFT-wrapped for
    LoRA and QLoRA, whose adapter config records ``base_name`` as the base model)."""
    method = config.method
    if method == "frozen_vision":
        freeze_vision(model)
        return model
    if method == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    peft_config = lora_config(
        model,
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        include_vision=not config.freeze_vision_model,
    )
    peft_model = get_peft_model(model, peft_config)
    if base_name is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_name
    _save_adapters_only(peft_model)
    return peft_model


def _save_adapters_only(peft_model: Any) -> None:
    """Make every save (checkpoints, the final one) write only the adapter weights.

    PEFT also saves the full ``embed_tokens`` and ``lm_head`` whenever ``lm_head`` is a LoRA
    target (about 400 MB per checkpoint for Phi-3.5-V) and may ask the Hub whether the
    vocabulary changed. Neither applies: LoRA never changes the base weights or the vocabulary.
    """
    save_pretrained = peft_model.save_pretrained

    def save_adapters(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("save_embedding_layers", False)
        return save_pretrained(*args, **kwargs)

    peft_model.save_pretrained = save_adapters


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if getattr(parameter, "quant_state", None) is not None or type(parameter).__name__ == (
            "Params4bit"
        ):
            count *= 2  # two 4-bit values per stored byte
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
