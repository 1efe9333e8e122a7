"""Modules: the Mamba mixer with its recurrent step, pre-norm residual blocks, norms."""

from .block import Block
from .mixer import Mamba, MambaLayerState, no_weight_decay
from .norm import RMSNorm, create_norm
from .pooling import POOLINGS, pool_sequence

__all__ = [
    "POOLINGS", "Block", "Mamba", "MambaLayerState", "RMSNorm", "create_norm", "no_weight_decay", "pool_sequence",
]
