"""The Phi-3-V image embedding: a small CLIP ViT with the checkpoint's names, and the HD merge.

transformers' own CLIP changed its module tree in 5.6 (``CLIPVisionModel`` lost
``.vision_model``), and the checkpoint names are ``img_processor.vision_model.…``; this CLIP
keeps those names whatever the transformers version. Attention goes through transformers'
attention interface, so ``eager``, ``sdpa`` and ``flash_attention_2`` all work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_phi3_v import Phi3VConfig

MAX_INPUT_ID = int(1e9)  # image positions are ids in (-1e9, 0), as in the official code
MERGED_GRID = 12  # 24x24 patches merged 2x2


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention over ``[batch, heads, seq, dim]``; output ``[b, seq, h, d]``."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        self.embed_dim = vision["hidden_size"]
        self.patch_size = vision["patch_size"]
        self.num_patches = (vision["image_size"] // self.patch_size) ** 2
        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            vision["num_channels"],
            self.embed_dim,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(self.num_patches + 1, self.embed_dim)
        self.register_buffer(
            "position_ids", torch.arange(self.num_patches + 1).unsqueeze(0), persistent=False
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the processor gives float32; the tower runs in its weights' dtype
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [N, 576, C], patch index = row*24+col
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


class CLIPAttention(nn.Module):
    """Full (non-causal) multi-head attention with separate q/k/v/out projections."""

    def __init__(self, config: Phi3VConfig, vision: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = vision["hidden_size"]
        self.num_heads = vision["num_attention_heads"]
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.is_causal = False
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        shape = (batch, seq, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, _ = attention(self, query, key, value, None, scaling=self.scale, dropout=0.0)
        return self.out_proj(output.reshape(batch, seq, self.embed_dim))


class CLIPMLP(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        self.activation_fn = ACT2FN[vision["hidden_act"]]
        self.fc1 = nn.Linear(vision["hidden_size"], vision["intermediate_size"])
        self.fc2 = nn.Linear(vision["intermediate_size"], vision["hidden_size"])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: ``x + attn(LN1(x))``, then ``x + mlp(LN2(x))``."""

    def __init__(self, config: Phi3VConfig, vision: dict[str, Any]) -> None:
        super().__init__()
        eps = vision["layer_norm_eps"]
        self.self_attn = CLIPAttention(config, vision)
        self.layer_norm1 = nn.LayerNorm(vision["hidden_size"], eps=eps)
        self.mlp = CLIPMLP(vision)
        self.layer_norm2 = nn.LayerNorm(vision["hidden_size"], eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, config: Phi3VConfig, vision: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [CLIPEncoderLayer(config, vision) for _ in range(vision["num_hidden_layers"])]
        )


class CLIPVisionTransformer(nn.Module):
    """CLIP ViT that returns the output of one inner layer, as Phi-3-V uses it.

    All layers and ``post_layernorm`` exist so the state dict matches the checkpoint, but only
    the layers up to the selected one run (the official code runs all of them and keeps
    ``hidden_states[layer_idx]``; the result is the same).
    """

    def __init__(self, config: Phi3VConfig, vision: dict[str, Any]) -> None:
        super().__init__()
        eps = vision["layer_norm_eps"]
        self.embeddings = CLIPVisionEmbeddings(vision)
        self.pre_layrnorm = nn.LayerNorm(vision["hidden_size"], eps=eps)  # sic, checkpoint name
        self.encoder = CLIPEncoder(config, vision)
        self.post_layernorm = nn.LayerNorm(vision["hidden_size"], eps=eps)

    def forward(self, pixel_values: torch.Tensor, num_layers: int) -> torch.Tensor:
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers[:num_layers]:
            hidden_states = layer(hidden_states)
        return hidden_states


class CLIPVisionModel(nn.Module):
    """Holds ``vision_model`` so that names read ``img_processor.vision_model.…``."""

    def __init__(self, config: Phi3VConfig, vision: dict[str, Any]) -> None:
        super().__init__()
        self.vision_model = CLIPVisionTransformer(config, vision)


class Phi3ImageEmbedding(nn.Module):
    """Image features for the negative-id positions of ``input_ids``.

    Per image: CLIP on the global view and the real crops (padding crops are skipped), the
    layer ``layer_idx`` patch features merged 2x2, laid out on the crop grid with one
    ``sub_GN`` after every feature row, then ``[sub-crops, glb_GN, global]`` through the
    2-layer MLP. The k-th run of negative ids gets the k-th image, whatever the id's value.
    """

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        embd = config.embd_layer if isinstance(config.embd_layer, dict) else {}
        if not (
            embd.get("use_hd_transform")
            and embd.get("with_learnable_separator")
            and embd.get("hd_transform_order", "sub_glb") == "sub_glb"
            and embd.get("projection_cls") == "mlp"
        ):
            raise ValueError(
                f"unsupported embd_layer {config.embd_layer!r}: only the Phi-3/3.5-vision HD "
                "transform (sub_glb order, learnable separators, MLP projection) is implemented"
            )
        vision = config.vision_config
        if vision["image_size"] != 336 or vision["patch_size"] != 14:
            raise ValueError("the Phi-3-V HD transform needs a 336 px CLIP with 14 px patches")
        if config.vision_type_feature != "patch":
            raise ValueError(f"unsupported type_feature {config.vision_type_feature!r}")
        self.image_dim_out = int(config.img_processor.get("image_dim_out", vision["hidden_size"]))
        if self.image_dim_out != vision["hidden_size"]:
            raise ValueError("img_processor.image_dim_out must equal the CLIP hidden size")
        layers = vision["num_hidden_layers"]
        layer_idx = config.vision_layer_idx
        # hidden_states[layer_idx] of the official code is the output after this many layers
        self.num_vision_layers = layer_idx if layer_idx >= 0 else layers + 1 + layer_idx
        self.img_processor = CLIPVisionModel(config, vision)
        merged = self.image_dim_out * 4
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged))
        self.img_projection = nn.Sequential(
            nn.Linear(merged, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def unused_parameters(self) -> list[nn.Parameter]:
        """The CLIP layers after the selected one and ``post_layernorm``: never used."""
        vision = self.img_processor.vision_model
        extra = list(vision.encoder.layers[self.num_vision_layers :].parameters())
        return extra + list(vision.post_layernorm.parameters())

    def merge_2x2(self, features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """``[rows*cols, 576, C]`` crop features -> ``[rows*12, cols*12, 4C]`` on the grid."""
        n, length, channels = features.shape
        side = int(length**0.5)
        half = side // 2
        merged = (
            features.reshape(n, half, 2, half, 2, channels)
            .permute(0, 1, 3, 2, 4, 5)  # [n, 12, 12, 2, 2, C]: channel = (dy*2+dx)*C + c
            .reshape(rows, cols, half, half, 4 * channels)
            .permute(0, 2, 1, 3, 4)  # [rows, 12, cols, 12, 4C]
        )
        return merged.reshape(rows * half, cols * half, 4 * channels)

    def add_newline(self, grid: torch.Tensor) -> torch.Tensor:
        """Append ``sub_GN`` to every feature row: ``[H, W, D]`` -> ``[H * (W + 1), D]``."""
        height, _, dim = grid.shape
        newline = self.sub_GN.reshape(1, 1, dim).expand(height, 1, dim)
        return torch.cat([grid, newline.to(grid.dtype)], dim=1).reshape(-1, dim)

    def image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Projected features of all images, concatenated: ``[sum of token counts, hidden]``."""
        grids = [(int(h) // 336, int(w) // 336) for h, w in image_sizes.tolist()]
        crops = torch.cat(
            [pixel_values[i, : 1 + rows * cols] for i, (rows, cols) in enumerate(grids)]
        )
        features = self.img_processor.vision_model(crops, self.num_vision_layers)[:, 1:]
        sequences, start = [], 0
        for rows, cols in grids:
            glb = self.merge_2x2(features[start : start + 1], 1, 1)
            sub = self.merge_2x2(features[start + 1 : start + 1 + rows * cols], rows, cols)
            start += 1 + rows * cols
            sequences += [
                self.add_newline(sub),
                self.glb_GN.reshape(1, -1).to(sub.dtype),
                self.add_newline(glb),
            ]
        # The bias, not the weight, carries the compute dtype: a 4-bit quantized (QLoRA)
        # weight is stored as uint8. The official code casts to the bias dtype too.
        return self.img_projection(torch.cat(sequences).to(self.img_projection[0].bias.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
    ) -> torch.Tensor:
        """Return ``inputs_embeds`` with image features written at the image positions."""
        positions = torch.nonzero((input_ids < 0) & (input_ids > -MAX_INPUT_ID), as_tuple=True)
        if positions[0].numel() == 0:
            return inputs_embeds
        features = self.image_features(pixel_values, image_sizes)
        if features.shape[0] != positions[0].numel():
            raise ValueError(
                f"the batch has {positions[0].numel()} image positions but its "
                f"{len(image_sizes)} image(s) give {features.shape[0]} feature tokens; "
                "input_ids and pixel_values/image_sizes do not belong together"
            )
        return inputs_embeds.index_put(positions, features.to(inputs_embeds.dtype))
