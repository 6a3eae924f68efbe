"""The native model: official names and shapes, image placement, loading, saving, training,
attention backends and generation, all on the tiny checkpoint in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import LogitsProcessor, LogitsProcessorList

from phi3v_train.modeling import Phi3VConfig, Phi3VForCausalLM
from phi3v_train.processing import ChatTurn

NAMES = Path(__file__).resolve().parents[2] / "fixtures" / "phi3v_state_dict_names.txt"


def official_config_dir(tmp_path: Path, tiny_dir: Path) -> Path:
    """The real Phi-3.5-vision config.json: the tiny one with the real sizes (§1)."""
    config = json.loads((tiny_dir / "config.json").read_text())
    config.update(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        img_processor={
            "image_dim_out": 1024,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        rope_scaling={"type": "su", "short_factor": [1.1] * 48, "long_factor": [2.0] * 48},
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_state_dict_equals_the_official_names_and_shapes(tmp_path, tiny_dir):
    expected = {}
    for line in NAMES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            expected[name] = tuple(int(n) for n in shape.split(","))
    config = Phi3VConfig.from_pretrained(official_config_dir(tmp_path, tiny_dir))
    assert config.rope_parameters["rope_type"] == "longrope"
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected
    assert sum(torch.Size(s).numel() for s in actual.values()) == 4_146_621_440


def sample_batch(processor, images_per_sample=(((640, 480),),), text="What is it?"):
    examples = []
    for sizes in images_per_sample:
        images = [
            Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 50).convert("RGB") for size in sizes
        ]
        if not sizes:
            images = []
        examples.append(
            processor.training_example([ChatTurn(user=text, assistant="A fractal", images=images)])
        )
    return processor.collate(examples)


def test_image_features_land_exactly_at_image_positions(tiny_model, processor):
    batch = sample_batch(processor, [[(640, 480), (300, 500)], [], [(1000, 400)]])
    ids = batch["input_ids"]
    embed = tiny_model.model.embed(ids, batch["pixel_values"], batch["image_sizes"])
    text_only = tiny_model.model.embed_tokens(ids.clamp(min=0))
    image_positions = ids < 0
    assert image_positions.sum() == 757 + 757 + 457
    assert torch.equal(embed[~image_positions], text_only[~image_positions])
    features = tiny_model.model.vision_embed_tokens.image_features(
        batch["pixel_values"], batch["image_sizes"]
    )
    assert torch.equal(embed[image_positions], features)  # in image order, row-major over the batch
    assert not torch.allclose(embed[image_positions], text_only[image_positions])
    # the separators sit where the layout says: the last token of every feature row is sub_GN
    projected_sub = tiny_model.model.vision_embed_tokens.img_projection(
        tiny_model.model.vision_embed_tokens.sub_GN.reshape(1, -1)
    )
    first = features[: 24 * 25]  # image 1: a 2x2 grid -> 24 rows of 24 features + separator
    assert torch.allclose(first[24::25], projected_sub.expand(24, -1), atol=1e-6)


def test_padding_crops_never_reach_clip(tiny_model, processor):
    batch = sample_batch(processor, [[(1000, 400)]])  # 2 crops of 4: slots 3 and 4 are padding
    seen = []
    clip = tiny_model.model.vision_embed_tokens.img_processor.vision_model
    clip.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    poisoned = batch["pixel_values"].clone()
    poisoned[:, 3:] = float("nan")
    with torch.no_grad():
        out = tiny_model(**{**batch, "pixel_values": poisoned})
    assert seen == [3] and torch.isfinite(out.logits).all()


def test_mismatched_images_are_a_clear_error(tiny_model, processor):
    batch = sample_batch(processor, [[(640, 480)]])
    with pytest.raises(ValueError, match="image positions"):
        tiny_model(
            input_ids=batch["input_ids"][:, :-500],
            pixel_values=batch["pixel_values"],
            image_sizes=batch["image_sizes"],
        )


def test_forward_backward_trains_on_cpu(tiny_model, processor):
    tiny_model.train()
    tiny_model.activation_checkpointing_enable({"use_reentrant": False})
    assert tiny_model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[
        0
    ].gradient_checkpointing
    batch = sample_batch(processor, [[(640, 480)], [(200, 300)]])
    out = tiny_model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    emb = tiny_model.model.vision_embed_tokens
    for parameter in (
        emb.img_projection[0].weight,
        emb.glb_GN,
        emb.sub_GN,
        tiny_model.lm_head.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    first_clip = emb.img_processor.vision_model.encoder.layers[0].mlp.fc1.weight
    assert first_clip.grad is not None and first_clip.grad.abs().sum() > 0
    # the unused last CLIP layer and post-LN are frozen: no DDP "unused parameter" trouble
    assert all(not p.requires_grad and p.grad is None for p in tiny_model.unused_parameters())
    optimizer = torch.optim.SGD([p for p in tiny_model.parameters() if p.requires_grad], lr=1.0)
    optimizer.step()
    assert tiny_model(**batch).loss < out.loss


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(tiny_dir, processor, dtype):
    model = Phi3VForCausalLM.from_pretrained(tiny_dir, dtype=dtype).eval()
    batch = sample_batch(processor)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()


def test_eager_and_sdpa_give_the_same_logits(tiny_dir, processor):
    batch = sample_batch(processor, [[(640, 480)], [(300, 200)]])
    logits = {}
    for attn in ("eager", "sdpa"):
        model = Phi3VForCausalLM.from_pretrained(
            tiny_dir, dtype=torch.float32, attn_implementation=attn
        )
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            logits[attn] = model(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(logits["eager"][mask], logits["sdpa"][mask], atol=1e-5)


def test_save_and_reload_gives_the_same_logits_and_the_official_layout(
    tiny_model, processor, tmp_path
):
    batch = sample_batch(processor)
    with torch.no_grad():
        before = tiny_model(**batch).logits
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"
    assert "rope_parameters" not in config and config["architectures"] == ["Phi3VForCausalLM"]
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(tiny_model.state_dict())
    reloaded = Phi3VForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, before)


def test_loads_sharded_checkpoints_and_the_wte_alias(tiny_model, processor, tiny_dir, tmp_path):
    """Two shards behind model.safetensors.index.json, token embedding stored as ``wte``."""
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    state["model.vision_embed_tokens.wte.weight"] = state.pop("model.embed_tokens.weight")
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    loaded, info = Phi3VForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    batch = sample_batch(processor)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, tiny_model(**batch).logits)


class ForceEndAt(LogitsProcessor):
    """Make ``<|end|>`` the greedy choice once ``steps`` tokens were generated."""

    def __init__(self, prompt_length: int, steps: int, token: int) -> None:
        self.prompt_length, self.steps, self.token = prompt_length, steps, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length >= self.steps:
            scores[:, self.token] = scores.max() + 100
        return scores


def test_generate_uses_the_cache_and_stops_at_end(tiny_model, processor):
    turns = [ChatTurn(user="What is it?", images=[Image.new("RGB", (500, 300), "blue")])]
    inputs = processor.collate([processor.generation_inputs(turns)], padding_side="left")
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        cached = tiny_model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        uncached = tiny_model.generate(
            **inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6, use_cache=False
        )
        stopped = tiny_model.generate(
            **inputs,
            max_new_tokens=20,
            do_sample=False,
            logits_processor=LogitsProcessorList([ForceEndAt(length, 3, 32007)]),
        )
    assert torch.equal(cached, uncached) and cached.shape[1] == length + 6
    assert stopped.shape[1] == length + 4 and stopped[0, -1].item() == 32007
    assert tiny_model.generation_config.eos_token_id[:2] == [32007, 32000]
