"""Models: config, backbone, task heads, generation, checkpoints."""

from .backbone import MambaModel, MambaState
from .checkpoint import CheckpointError, load_model, save_pretrained
from .config import MambaConfig
from .generation import SamplingConfig, generate
from .heads import (
    ARCHITECTURES,
    IGNORE_INDEX,
    MambaForMaskedLM,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaLMHeadModel,
    MambaPreTrainedModel,
    ModelOutput,
)

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "IGNORE_INDEX",
    "MambaConfig",
    "MambaForMaskedLM",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaLMHeadModel",
    "MambaModel",
    "MambaPreTrainedModel",
    "MambaState",
    "ModelOutput",
    "SamplingConfig",
    "generate",
    "load_model",
    "save_pretrained",
]
