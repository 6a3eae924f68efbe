"""The method matrix on the tiny checkpoint: which weights train, precision, attention, QLoRA."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from phi3v_train.config import TrainConfig
from phi3v_train.methods import (
    LANGUAGE_TARGETS,
    MethodError,
    apply_method,
    count_parameters,
    load_dtype,
    load_model,
    quantization_config,
    resolve_attention,
    resolve_precision,
    vision_parameters,
)
from phi3v_train.modeling import Phi3VForCausalLM

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only; nothing runs on it in these tests


def config(**settings) -> TrainConfig:
    return TrainConfig(lora_rank=4, **settings)


def lora_modules(model: torch.nn.Module) -> set[str]:
    """Base-model names of the modules that carry a LoRA adapter."""
    return {
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }


# --- precision -----------------------------------------------------------------------------------
def test_fp16_on_cpu_trains_in_fp32_with_one_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="phi3v_train"):
        assert resolve_precision("fp16", on_gpu=False) == "fp32"
    (record,) = caplog.records
    assert "fp16 mixed precision needs a GPU" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert resolve_precision("bf16", on_gpu=False) == "bf16"  # CPU autocast supports bf16
    assert resolve_precision("fp32", on_gpu=False) == "fp32"


def test_weights_that_train_load_in_fp32_a_frozen_lora_base_in_half():
    assert load_dtype("full", "bf16") == torch.float32  # autocast / DeepSpeed keep fp32 masters
    assert load_dtype("frozen_vision", "fp16") == torch.float32
    assert load_dtype("lora", "bf16") == torch.bfloat16
    assert load_dtype("qlora", "fp16") == torch.float16
    assert load_dtype("lora", "fp32") == torch.float32


# --- attention -----------------------------------------------------------------------------------
def test_flash_attention_without_cuda_falls_back_to_sdpa_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="phi3v_train"):
        assert resolve_attention("flash_attention_2", "fp16", CPU) == "sdpa"
    assert "flash_attention_2 needs a CUDA GPU; using sdpa instead" in caplog.text
    assert resolve_attention("eager", "fp16", CPU) == "eager"
    assert resolve_attention("sdpa", "bf16", CPU) == "sdpa"


def test_flash_attention_without_the_package_falls_back_to_sdpa(caplog, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name)
    )
    with caplog.at_level(logging.WARNING, logger="phi3v_train"):
        assert resolve_attention("flash_attention_2", "fp16", CUDA) == "sdpa"
    assert "needs the flash-attn package" in caplog.text


def test_a_flash_attention_load_failure_is_a_notice_not_a_crash(tiny_dir, caplog):
    """Asked for directly (bypassing the checks), the kernel fails to load; SDPA is used."""
    with caplog.at_level(logging.WARNING, logger="phi3v_train"):
        model = load_model(
            tiny_dir, method="full", precision="fp32", attn="flash_attention_2", device=CPU
        )
    assert model.config._attn_implementation == "sdpa"
    assert "flash_attention_2 cannot be used" in caplog.text


# --- which weights train -------------------------------------------------------------------------
@pytest.fixture()
def model(tiny_dir) -> Phi3VForCausalLM:
    torch.manual_seed(0)
    return Phi3VForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)


def test_frozen_vision_freezes_exactly_the_vision_tower(model):
    trained = apply_method(model, config(freeze_vision_model=True))
    vision = vision_parameters(trained)
    assert vision and not any(p.requires_grad for p in vision.values())
    others = [p for n, p in trained.named_parameters() if n not in vision]
    assert all(p.requires_grad for p in others)


def test_full_fine_tuning_trains_all_but_the_unused_clip_layer(model):
    unused = {id(p) for p in model.unused_parameters()}
    trained = apply_method(model, config())
    for parameter in trained.parameters():
        assert parameter.requires_grad == (id(parameter) not in unused)


def test_lora_targets_are_the_cookbooks_minus_the_unused_clip_layer(model):
    layers = model.config.num_hidden_layers
    used_clip = model.model.vision_embed_tokens.num_vision_layers
    all_clip = len(model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers)
    assert used_clip < all_clip
    trained = apply_method(model, config(use_lora=True, lora_alpha_ratio=2.0))
    clip = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers"
    expected = {"lm_head"} | {
        f"model.layers.{i}.{part}"
        for i in range(layers)
        for part in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    }
    expected |= {
        f"{clip}.{i}.{part}"
        for i in range(used_clip)
        for part in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "mlp.fc1",
            "mlp.fc2",
        )
    }
    expected |= {f"model.vision_embed_tokens.img_projection.{i}" for i in (0, 2)}
    assert lora_modules(trained) == expected
    lora_config = trained.peft_config["default"]
    assert (lora_config.r, lora_config.lora_alpha, lora_config.init_lora_weights) == (
        4,
        8,
        "gaussian",
    )
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_lora_with_a_frozen_vision_tower_adapts_the_language_model_only(model):
    trained = apply_method(model, config(use_lora=True, freeze_vision_model=True))
    targets = lora_modules(trained)
    assert targets and not any("vision_embed_tokens" in name for name in targets)
    assert {name.rsplit(".", 1)[-1] for name in targets} == set(LANGUAGE_TARGETS)


def test_lora_starts_as_the_base_model(model, processor):
    """Gaussian init sets B = 0: evaluation before training scores the base model."""
    ids = torch.tensor([processor.tokenize("Hello there", add_bos=True)])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        trained = apply_method(model, config(use_lora=True))
        after = trained(input_ids=ids).logits
    torch.testing.assert_close(before, after)


def test_count_parameters(model):
    trained = apply_method(model, config(use_lora=True))
    trainable, total = count_parameters(trained)
    assert 0 < trainable < total
    assert trainable == sum(p.numel() for p in trained.parameters() if p.requires_grad)


# --- QLoRA ---------------------------------------------------------------------------------------
def test_qlora_quantizes_the_base_to_4bit_nf4_on_this_cpu(tiny_dir):
    """bitsandbytes >= 0.45 runs 4-bit nf4 on CPU, so QLoRA runs here (not just a message)."""
    import bitsandbytes as bnb

    base = load_model(tiny_dir, method="qlora", precision="fp32", attn="sdpa", device=CPU)
    assert isinstance(base.model.layers[0].self_attn.qkv_proj, bnb.nn.Linear4bit)
    assert base.model.layers[0].self_attn.qkv_proj.weight.quant_type == "nf4"
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit)
    trained = apply_method(base, config(use_qlora=True))
    assert "model.layers.0.self_attn.qkv_proj" in lora_modules(trained)
    ids = torch.tensor([[1, 450, 4996, 29889]])
    out = trained(input_ids=ids, labels=ids)
    out.loss.backward()
    language = {  # text reaches the language adapters; B starts at 0, so A has no grad yet
        n: p.grad
        for n, p in trained.named_parameters()
        if p.requires_grad and "vision" not in n and ".lora_B." in n
    }
    assert language and all(g is not None and g.abs().sum() > 0 for g in language.values())


def test_qlora_without_bitsandbytes_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name),
    )
    with pytest.raises(MethodError, match=r"^QLoRA needs bitsandbytes: pip install"):
        quantization_config("fp32", CPU)


def test_qlora_where_bitsandbytes_cannot_run_4bit_is_one_clear_line(monkeypatch):
    import bitsandbytes

    def unsupported(*args, **kwargs):
        raise RuntimeError("4-bit is not supported on this backend\nlong details")

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", unsupported)
    with pytest.raises(MethodError) as error:
        quantization_config("fp32", CPU)
    message = str(error.value)
    assert message.startswith("QLoRA: bitsandbytes cannot run 4-bit nf4 on this cpu")
    assert "\n" not in message and "--use_lora" in message
