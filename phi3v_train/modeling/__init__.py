"""Native Phi-3.5-vision model, weight-compatible with ``microsoft/Phi-3.5-vision-instruct``."""

from .configuration_phi3_v import Phi3VConfig
from .modeling_phi3_v import STOP_TOKEN_IDS, Phi3VForCausalLM, Phi3VModel, Phi3VPreTrainedModel
from .vision import Phi3ImageEmbedding

__all__ = [
    "STOP_TOKEN_IDS",
    "Phi3ImageEmbedding",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VModel",
    "Phi3VPreTrainedModel",
]
