"""Models: config, backbone, task heads, generation, checkpoints."""

from .backbone import MambaModel, MambaState
from .config import MambaConfig
from .generation import SamplingConfig, generate
from .heads import (
    ARCHITECTURES,
    IGNORE_INDEX,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaLMHeadModel,
    MambaPreTrainedModel,
    ModelOutput,
)

__all__ = [
    "ARCHITECTURES",
    "IGNORE_INDEX",
    "MambaConfig",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaLMHeadModel",
    "MambaModel",
    "MambaPreTrainedModel",
    "MambaState",
    "ModelOutput",
    "SamplingConfig",
    "generate",
]
