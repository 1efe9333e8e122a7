"""Modules: the Mamba mixer with its recurrent step, pre-norm residual blocks, norms, pooling, and the
bidirectional wrapper."""

from .bidirectional import BiMamba, NonCausalBlock, padded_reverse_index, reverse_padded
from .block import Block, ResidualBlock
from .mixer import Mamba, MambaLayerState, no_weight_decay
from .norm import RMSNorm, create_norm
from .pooling import POOLINGS, pool_sequence

__all__ = [
    "POOLINGS",
    "BiMamba",
    "Block",
    "Mamba",
    "MambaLayerState",
    "NonCausalBlock",
    "RMSNorm",
    "ResidualBlock",
    "create_norm",
    "no_weight_decay",
    "padded_reverse_index",
    "pool_sequence",
    "reverse_padded",
]
