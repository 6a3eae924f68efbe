"""Training throughput of the full-size Phi-3.5-V architecture on one GPU (random weights).

Synthetic DocVQA-shaped samples (one page at ``--num-crops 16``, a short question and
answer: about 2,500 tokens), LoRA and full fine-tuning of the language model (vision tower
frozen), bf16 autocast, flash attention and SDPA, each measured in this run:

    python benchmarks/train_throughput.py                       # all four, on CUDA
    python benchmarks/train_throughput.py --methods lora --attn flash_attention_2
    python benchmarks/train_throughput.py --tiny --device cpu   # smoke test of this script

Prints images/s, tokens/s, model TFLOP per sample, MFU against ``--peak-tflops`` (989 for
an H100's dense bf16) and peak memory, and the ratio to the published Cookbook figure (12.1
images/s on 8 x A100 for LoRA with flash attention, i.e. 1.5 per GPU) and to SDPA.
The model setup is the trainer's own (``phi3v_train.methods``), so what is measured is what
``phi3v-train`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from phi3v_train.config import TrainConfig
from phi3v_train.methods import apply_method
from phi3v_train.modeling import Phi3VConfig, Phi3VForCausalLM
from phi3v_train.processing import ChatTurn, Phi3VProcessor

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-phi3v"
PUBLISHED_LORA_IMAGES_PER_GPU = 12.1 / 8  # FineTuning_Vision.md speed table, 8 x A100
FULL_SIZE = {  # reference/phi3v-model.md §1
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "img_processor": {
        "image_dim_out": 1024,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 144,
    },
}
CLIP_LAYERS_RUN, CLIP_WIDTH, CLIP_TOKENS = 23, 1024, 577


def model_config(tiny: bool) -> Phi3VConfig:
    """The tiny fixture's config, or the same with the real Phi-3.5-V sizes."""
    config = json.loads((TINY / "config.json").read_text())
    if not tiny:
        config.update(FULL_SIZE)
        head_dim = FULL_SIZE["hidden_size"] // FULL_SIZE["num_attention_heads"]
        factors = config["rope_scaling"]
        for key in ("short_factor", "long_factor"):
            factors[key] = list(np.linspace(1.0, factors[key][-1], head_dim // 2))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        return Phi3VConfig.from_pretrained(folder)


def training_flops(config: Phi3VConfig, tokens: int, crops: int, method: str) -> float:
    """Model FLOPs of one sample's forward and backward pass (no recomputation counted).

    Matmuls cost 2 FLOPs per weight per token forward; backward costs 2 more for the
    activation gradients, and 2 more for weight gradients where weights train. LoRA trains
    no base weight (4 per weight per token, CLIP included: its adapters need the activation
    gradients); full fine-tuning of the language model trains the text weights (6) and runs
    the frozen vision tower forward only (2). Causal attention costs 2 x T^2 x d per layer
    forward (QK and AV, half the scores masked) and twice that backward.
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    text_weights = layers * (4 * d * d + 3 * d * config.intermediate_size) + d * config.vocab_size
    text_factor = 6 if method == "full-lm" else 4
    attention = 6 * layers * tokens * tokens * d
    vision = config.vision_config
    width = vision.get("hidden_size", CLIP_WIDTH)
    clip_layers_run = vision.get("num_hidden_layers", CLIP_LAYERS_RUN + 1) - 1  # layer_idx -2
    clip_weights = clip_layers_run * 12 * width * width
    clip_factor = 2 if method == "full-lm" else 4
    clip = clip_factor * clip_weights * CLIP_TOKENS * crops
    return text_factor * text_weights * tokens + attention + clip


def synthetic_example(processor: Phi3VProcessor, width: int, height: int) -> dict:
    """One DocVQA-like training example: a noisy page, a question, a short answer."""
    rng = np.random.default_rng(0)
    page = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    turn = ChatTurn(
        user="What is the total amount due on this invoice?\nAnswer briefly.",
        assistant="$ 1,250.00",
        images=[page],
    )
    return processor.training_example([turn], sample_id="synthetic")


def measure(args: argparse.Namespace, method: str, attn: str) -> dict[str, float]:
    device = torch.device(args.device)
    config = model_config(args.tiny)
    config._attn_implementation = attn
    torch.manual_seed(0)
    dtype = torch.bfloat16 if method == "lora" else torch.float32
    with device:
        model = Phi3VForCausalLM(config).to(dtype)
    settings = TrainConfig(
        use_lora=method == "lora",
        freeze_vision_model=method == "full-lm",  # LoRA: the Cookbook's, vision modules too
        bf16=True,
        lora_rank=args.lora_rank,
    )
    model = apply_method(model, settings)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), eps=1e-7)
    processor = Phi3VProcessor.from_pretrained(TINY, num_crops=args.num_crops)
    example = synthetic_example(processor, args.width, args.height)
    batch = processor.collate([example] * args.batch_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = batch["input_ids"].shape[1]
    crops = int(batch["image_sizes"].prod(dim=1).div(336 * 336).add(1).sum()) // args.batch_size

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    images_per_s = args.steps * args.batch_size / elapsed
    flops = training_flops(config, tokens, crops, method)
    return {
        "images_per_s": images_per_s,
        "tokens_per_s": images_per_s * tokens,
        "tokens": tokens,
        "tflop_per_sample": flops / 1e12,
        "mfu": images_per_s * flops / (args.peak_tflops * 1e12),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else math.nan,
        "loss": loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "full-lm"])
    parser.add_argument("--attn", nargs="+", default=["flash_attention_2", "sdpa"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="The tiny fixture's sizes.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-crops", type=int, default=16)
    parser.add_argument("--width", type=int, default=1700)
    parser.add_argument("--height", type=int, default=2200)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device: this benchmark needs a GPU (use --tiny --device cpu to "
                       "smoke-test the script)\n")  # fmt: skip
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device: {device_name}; sizes: {'tiny' if args.tiny else 'Phi-3.5-V (4.15B)'}")
    results = {}
    for method in args.methods:
        for attn in args.attn:
            try:
                result = measure(args, method, attn)
            except (ImportError, ValueError, RuntimeError) as error:
                print(f"{method:8s} {attn:18s} not run: {str(error).splitlines()[0]}")
                continue
            finally:
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            results[(method, attn)] = result
            print(
                f"{method:8s} {attn:18s} {result['images_per_s']:7.2f} images/s "
                f"{result['tokens_per_s']:9.0f} tokens/s ({result['tokens']} tokens/sample) "
                f"{result['tflop_per_sample']:6.1f} TFLOP/sample  MFU {result['mfu']:6.1%}  "
                f"peak {result['peak_gib']:5.1f} GiB"
            )
    lora = results.get(("lora", "flash_attention_2"))
    if lora:
        ratio = lora["images_per_s"] / PUBLISHED_LORA_IMAGES_PER_GPU
        print(f"LoRA + flash attention vs published 1.51 images/s per A100: {ratio:.2f}x")
    for method in args.methods:
        flash, sdpa = results.get((method, "flash_attention_2")), results.get((method, "sdpa"))
        if flash and sdpa:
            speedup = flash["images_per_s"] / sdpa["images_per_s"]
            print(f"{method}: flash attention / SDPA = {speedup:.2f}x")


if __name__ == "__main__":
    main()
