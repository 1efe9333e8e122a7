"""Models: the registry and model contract, config, backbone, task heads, generation, checkpoints."""

from .backbone import MambaModel, MambaState
from .checkpoint import CheckpointError, load_model, save_pretrained
from .config import MambaConfig
from .generation import SamplingConfig, generate
from .heads import (
    IGNORE_INDEX,
    MambaForMaskedLM,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaForVectorSequences,
    MambaLMHeadModel,
    MambaPreTrainedModel,
    ModelOutput,
)
from .protocol import ModelConfig, TrainableModel, is_trainable
from .registry import (
    architecture_class,
    config_class,
    list_architectures,
    register_architecture,
    register_backbone,
    register_config,
)

__all__ = [
    "CheckpointError",
    "IGNORE_INDEX",
    "MambaConfig",
    "MambaForMaskedLM",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaForVectorSequences",
    "MambaLMHeadModel",
    "MambaModel",
    "MambaPreTrainedModel",
    "MambaState",
    "ModelConfig",
    "ModelOutput",
    "SamplingConfig",
    "TrainableModel",
    "architecture_class",
    "config_class",
    "generate",
    "is_trainable",
    "list_architectures",
    "load_model",
    "register_architecture",
    "register_backbone",
    "register_config",
    "save_pretrained",
]
