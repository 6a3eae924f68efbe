"""``Phi3VConfig``: reads the official Phi-3.5-vision ``config.json`` without remote code.

The text part is transformers' ``Phi3Config``. Two things of the official file need care on
transformers 5: ``rope_scaling = {"type": "su", ...}`` must become LongRoPE parameters (the
raw dict fails 5.x validation), and ``_attn_implementation: "flash_attention_2"`` must not
force flash attention on machines that lack it. Saving writes the official keys back, so the
directory stays readable by the official code.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.models.phi3.configuration_phi3 import Phi3Config

# The vision tower hard-coded by the official code (CLIP ViT-L/14 at 336 px).
CLIP_VIT_LARGE_PATCH14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}
DEFAULT_EMBD_LAYER = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}
DEFAULT_IMG_PROCESSOR = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}


@strict
class Phi3VConfig(Phi3Config):
    """Phi-3-V configuration: ``Phi3Config`` plus the official ``embd_layer`` and
    ``img_processor`` dicts.

    ``img_processor`` may carry a ``vision_config`` dict (our extension, ignored by the
    official code) that overrides the CLIP ViT-L/14-336 sizes; the tiny test checkpoint uses
    it. ``layer_idx`` (default -2) and ``type_feature`` (default "patch") are read from
    ``img_processor`` as the official code does.
    """

    model_type = "phi3_v"

    embd_layer: dict | str = "default"
    img_processor: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # The official file pins flash attention; let from_pretrained pick (sdpa by default).
        kwargs.pop("_attn_implementation", None)
        if self.embd_layer == "default":
            self.embd_layer = dict(DEFAULT_EMBD_LAYER)
        if self.img_processor is None:
            self.img_processor = dict(DEFAULT_IMG_PROCESSOR)
        super().__post_init__(**kwargs)

    def convert_rope_params_to_dict(self, default_theta: float = 10_000.0, **kwargs: Any):
        """Accept the official ``rope_scaling={"type": "su"|"yarn", ...}`` as LongRoPE."""
        rope_scaling = kwargs.get("rope_scaling")
        if isinstance(rope_scaling, dict):
            rope_scaling = dict(rope_scaling)
            kind = rope_scaling.pop("type", None) or rope_scaling.get("rope_type")
            rope_scaling["rope_type"] = "longrope" if kind in ("su", "yarn") else kind
            rope_scaling.setdefault(
                "original_max_position_embeddings", self.original_max_position_embeddings
            )
            kwargs["rope_scaling"] = rope_scaling
        return super().convert_rope_params_to_dict(default_theta=default_theta, **kwargs)

    @property
    def vision_config(self) -> dict[str, Any]:
        """CLIP sizes: ViT-L/14-336 unless ``img_processor["vision_config"]`` overrides them."""
        return {**CLIP_VIT_LARGE_PATCH14_336, **(self.img_processor or {}).get("vision_config", {})}

    @property
    def vision_layer_idx(self) -> int:
        return int((self.img_processor or {}).get("layer_idx", -2))

    @property
    def vision_type_feature(self) -> str:
        return str((self.img_processor or {}).get("type_feature", "patch"))

    def to_dict(self) -> dict[str, Any]:
        """The official ``config.json`` keys: ``rope_scaling`` with ``type: su``, ``rope_theta``."""
        out = super().to_dict()
        rope = dict(out.pop("rope_parameters", None) or {})
        out["rope_theta"] = rope.get("rope_theta", 10_000.0)
        if rope.get("rope_type") == "longrope":
            out["rope_scaling"] = {
                "type": "su",
                "short_factor": list(rope["short_factor"]),
                "long_factor": list(rope["long_factor"]),
            }
        else:
            out["rope_scaling"] = None
        out.setdefault("architectures", ["Phi3VForCausalLM"])
        return out
