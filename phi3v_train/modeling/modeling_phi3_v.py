"""Phi-3.5-vision on transformers 5: the Phi3 text model plus :class:`Phi3ImageEmbedding`.

The module tree mirrors the official checkpoint, so ``state_dict()`` has its names and
shapes: ``model.embed_tokens``, ``model.vision_embed_tokens.…``, ``model.layers.N.…``,
``model.norm``, ``lm_head``. The text layers are transformers' own Phi3 classes, so
attention goes through the attention interface (``eager``, ``sdpa``, ``flash_attention_2``),
gradient checkpointing and ``generate()`` with a KV cache come from transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import (
    Phi3DecoderLayer,
    Phi3ForCausalLM,
    Phi3Model,
    Phi3PreTrainedModel,
    Phi3RMSNorm,
    Phi3RotaryEmbedding,
)

from .configuration_phi3_v import Phi3VConfig
from .vision import (
    CLIPEncoderLayer,
    CLIPVisionEmbeddings,
    Phi3ImageEmbedding,
)

END_TOKEN_ID = 32007  # <|end|>: the end of an assistant turn
ENDOFTEXT_TOKEN_ID = 32000  # <|endoftext|>: the tokenizer's eos and pad
STOP_TOKEN_IDS = [END_TOKEN_ID, ENDOFTEXT_TOKEN_ID]
WTE_ALIAS = "model.vision_embed_tokens.wte.weight"  # the official in-memory tie of embed_tokens
EMBED_TOKENS = "model.embed_tokens.weight"


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config_class = Phi3VConfig
    config: Phi3VConfig
    _no_split_modules: ClassVar[list[str]] = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    # older checkpoints and official in-memory state dicts may carry these
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [
        r"\.vision_embed_tokens\.wte\.weight$",
        r"\.embeddings\.position_ids$",
    ]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Phi3's init for the text part; CLIP-like init for the vision tower."""
        std = self.config.initializer_range
        if isinstance(module, CLIPVisionEmbeddings):
            nn.init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            nn.init.normal_(module.patch_embedding.weight, std=std)
            nn.init.normal_(module.position_embedding.weight, std=std)
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).unsqueeze(0))
        elif isinstance(module, Phi3ImageEmbedding):
            nn.init.normal_(module.glb_GN, std=std)
            nn.init.normal_(module.sub_GN, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    """``Phi3Model`` with ``vision_embed_tokens``; image positions are negative ids."""

    def __init__(self, config: Phi3VConfig) -> None:
        Phi3VPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.layers = nn.ModuleList(
            [Phi3DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = Phi3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Phi3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()
        self.freeze_unused_parameters()

    def freeze_unused_parameters(self) -> None:
        """Freeze the CLIP layers after the selected one and ``post_layernorm``.

        They are kept so the state dict matches the checkpoint, but never run; frozen, they
        get no gradient, no optimizer state, and DDP does not see unused parameters.
        """
        for parameter in self.vision_embed_tokens.unused_parameters():
            parameter.requires_grad_(False)

    def embed(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features at the negative-id positions."""
        has_images = bool((input_ids < 0).any())
        inputs_embeds = self.embed_tokens(input_ids.clamp(0, self.vocab_size - 1))
        if has_images:
            if pixel_values is None or image_sizes is None:
                raise ValueError(
                    "input_ids has image positions (negative ids) but no pixel_values/image_sizes"
                )
            inputs_embeds = self.vision_embed_tokens(
                input_ids, inputs_embeds, pixel_values, image_sizes
            )
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
            input_ids = None
        return Phi3Model.forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class Phi3VForCausalLM(Phi3VPreTrainedModel, Phi3ForCausalLM):
    """Phi-3.5-vision for causal LM: loads the official checkpoint by parameter name.

    Inputs are what :class:`phi3v_train.processing.Phi3VProcessor` returns (``input_ids``
    with negative image ids, ``attention_mask``, ``pixel_values``, ``image_sizes``).
    """

    def __init__(self, config: Phi3VConfig) -> None:
        Phi3VPreTrainedModel.__init__(self, config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self._set_generation_defaults()

    def _set_generation_defaults(self) -> None:
        """Stop at ``<|end|>`` or end-of-text, pad with end-of-text (the config says eos 2)."""
        generation = self.generation_config
        eos = generation.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        generation.eos_token_id = STOP_TOKEN_IDS + [i for i in eos if i not in STOP_TOKEN_IDS]
        if generation.pad_token_id is None:
            generation.pad_token_id = ENDOFTEXT_TOKEN_ID

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any):
        """Load a directory (or hub id) in the official layout; ``sdpa`` attention by default.

        Accepts the checkpoint's ``model.vision_embed_tokens.wte.weight`` alias of the token
        embedding when ``model.embed_tokens.weight`` is absent.
        """
        kwargs.setdefault("attn_implementation", "sdpa")
        if "key_mapping" not in kwargs and _only_has_wte_alias(pretrained_model_name_or_path):
            kwargs["key_mapping"] = {r"^model\.vision_embed_tokens\.wte\.weight$": EMBED_TOKENS}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info
        model.model.freeze_unused_parameters()
        model._set_generation_defaults()
        return loaded

    def unused_parameters(self) -> list[nn.Parameter]:
        """Checkpoint parameters that no forward pass uses (the last CLIP layer, post-LN)."""
        return self.model.vision_embed_tokens.unused_parameters()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_sizes)
            input_ids = None
        return Phi3ForCausalLM.forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def _only_has_wte_alias(name_or_path: str | Path) -> bool:
    """True when a local checkpoint stores the token embedding only under the ``wte`` name."""
    root = Path(name_or_path)
    if not root.is_dir():
        return False  # hub ids: transformers downloads; the official files use embed_tokens
    names: set[str] = set()
    index = root / "model.safetensors.index.json"
    if index.is_file():
        import json

        names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    else:
        from safetensors import safe_open

        for file in root.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                names.update(handle.keys())
    return WTE_ALIAS in names and EMBED_TOKENS not in names


__all__ = [
    "STOP_TOKEN_IDS",
    "CLIPEncoderLayer",
    "Phi3VForCausalLM",
    "Phi3VModel",
    "Phi3VPreTrainedModel",
]
