"""Fold a LoRA adapter into its base model: one model directory in the official layout.

Serving stacks (vLLM, plain ``from_pretrained``, ONNX export) want one set of weights, not a
base plus a PEFT adapter. The merge runs in float32 whatever the checkpoint stores, so
``W + scale * B @ A`` is not rounded twice, and the result is cast once to the base's stored
dtype (bfloat16 for Phi-3.5-vision) unless another dtype is asked for. A QLoRA adapter is
merged into the unquantized base the same way: merging into 4-bit weights would lose the
update in quantization error.

The output holds ``config.json``, ``generation_config.json``, the safetensors weights under
the checkpoint's own parameter names, the tokenizer files and ``preprocessor_config.json``,
and any remote-code ``*.py`` files of the base, so both our native
``Phi3VForCausalLM.from_pretrained`` and the official ``trust_remote_code`` loader read it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ValueError):
    """The adapter directory is missing, not in PEFT format, or does not fit the model."""


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """Return ``adapter_dir`` as a path, or raise :class:`AdapterError` saying what is wrong.

    Checked up front so a typo costs one line, not a traceback from deep inside peft after the
    base model has been loaded.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise AdapterError(f"adapter directory not found: {path}")
    if not (path / ADAPTER_CONFIG).is_file():
        raise AdapterError(
            f"{path} is not a PEFT adapter directory (no {ADAPTER_CONFIG}); pass the output "
            "directory of a --use_lora or --use_qlora run"
        )
    return path


def apply_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> Any:
    """Wrap ``model`` with the PEFT adapter saved in ``adapter_dir`` (inference mode).

    A size mismatch (an adapter trained on another model) becomes an :class:`AdapterError`
    naming both directories' first disagreement instead of peft's multi-page message.
    """
    from peft import PeftModel

    path = check_adapter_dir(adapter_dir)
    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), None)
        detail = detail or (first[0] if first else type(error).__name__)
        raise AdapterError(f"adapter {path} does not fit the base model: {detail}") from error


def stored_dtype(model_dir: Path) -> torch.dtype | None:
    """The dtype a checkpoint declares in ``config.json`` (``dtype`` or ``torch_dtype``)."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``base + adapter`` with the LoRA update folded in as a model directory.

    ``dtype`` is the saved precision; by default the base checkpoint's own. The processor
    files come from the adapter directory when training saved them there (they carry the
    ``num_crops`` the adapter was trained with), otherwise from the base. Returns ``out_dir``.
    """
    from phi3v_train.modeling import Phi3VForCausalLM
    from phi3v_train.processing import Phi3VProcessor, resolve_model_dir

    adapter = check_adapter_dir(adapter_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {out} exists and is not empty")
    base = resolve_model_dir(base_dir, ["*.json", "*.safetensors", "*.py", "tokenizer.model"])
    model = Phi3VForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = apply_adapter(model, adapter).merge_and_unload()
    merged.to(dtype or stored_dtype(base) or torch.float32)
    processor_dir = adapter if (adapter / "tokenizer.json").is_file() else base
    processor = Phi3VProcessor.from_pretrained(processor_dir)

    # written beside the target and renamed when complete: never a half-written model
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        merged.save_pretrained(staging)
        processor.save_pretrained(staging)
        for code in base.glob("*.py"):  # remote-code files that config.json's auto_map names
            shutil.copyfile(code, staging / code.name)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


__all__ = ["AdapterError", "apply_adapter", "check_adapter_dir", "merge_adapter", "stored_dtype"]
