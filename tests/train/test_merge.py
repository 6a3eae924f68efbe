"""``phi3v-train merge``: a LoRA adapter folded into the base gives the same logits as base +
adapter, in a directory ``from_pretrained`` loads, with the processor files and the base's
dtype; bad input is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from phi3v_train.cli import main
from phi3v_train.merge import AdapterError, merge_adapter
from phi3v_train.modeling import Phi3VForCausalLM
from phi3v_train.processing import ChatTurn, Phi3VProcessor

# the Cookbook's LoRA targets: language model, lm_head, CLIP and the image projection
TARGETS = [
    "qkv_proj",
    "o_proj",
    "gate_up_proj",
    "down_proj",
    "lm_head",
    "q_proj",
    "v_proj",
    "fc1",
    "img_projection.0",
]


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT adapter on the tiny model with random, non-zero A and B (so it matters)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = Phi3VForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(out, save_embedding_layers=False)
    return out


@pytest.fixture(scope="module")
def batch(tiny_dir: Path) -> dict[str, torch.Tensor]:
    processor = Phi3VProcessor.from_pretrained(tiny_dir, num_crops=2)
    turns = [ChatTurn(user="What is it?", images=[Image.new("RGB", (500, 300), "teal")])]
    return processor.collate([processor.generation_inputs(turns)], padding_side="left")


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_merged_logits_equal_base_plus_adapter(tiny_dir, adapter_dir, batch, tmp_path):
    from peft import PeftModel

    out = merge_adapter(tiny_dir, adapter_dir, tmp_path / "merged", dtype=torch.float32)
    base = Phi3VForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    plain = logits(base, batch)
    with_adapter = logits(PeftModel.from_pretrained(base, str(adapter_dir)), batch)
    merged = logits(Phi3VForCausalLM.from_pretrained(out, dtype=torch.float32), batch)
    assert (with_adapter - plain).abs().max() > 0.1  # the adapter really changes the model
    torch.testing.assert_close(merged, with_adapter, atol=1e-5, rtol=1e-5)
    # the official layout: config, weights under the checkpoint's names, processor files
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= (
        names
    )
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as handle:
        assert keys == set(handle.keys())
    assert not list(tmp_path.glob(".merged.*"))  # no staging folder left behind


def test_merge_keeps_the_base_dtype_by_default_via_the_cli(tiny_dir, adapter_dir, tmp_path):
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        main, ["merge", "--base", str(tiny_dir), "--adapter", str(adapter_dir), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote the merged model to {out}" in result.output
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}  # what the tiny checkpoint stores
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Phi3VForCausalLM"]
    model = Phi3VForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert Phi3VProcessor.from_pretrained(out).num_crops == 4  # the base's preprocessor config


def test_merge_refuses_bad_input_in_one_line(tiny_dir, adapter_dir, tmp_path):
    with pytest.raises(AdapterError, match="not a PEFT adapter directory"):
        merge_adapter(tiny_dir, tiny_dir, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    runner = CliRunner()
    for adapter, out, message in [
        (tmp_path / "missing", tmp_path / "out", "adapter directory not found"),
        (adapter_dir, taken, "exists and is not empty"),
    ]:
        args = ["merge", "--base", str(tiny_dir), "--adapter", str(adapter), "--out", str(out)]
        result = runner.invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
