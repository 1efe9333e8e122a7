"""Modules: the Mamba mixer with its recurrent step, causal self-attention with a KV cache, pre-norm residual
blocks, norms, pooling, the bidirectional wrapper, SS2D (VMamba's 2-D cross-scan layer) and the pooled U-Net."""

from .attention import AttentionState, CausalSelfAttention
from .bidirectional import BiMamba, NonCausalBlock, padded_reverse_index, reverse_padded
from .block import Block, ResidualBlock
from .mixer import Mamba, MambaLayerState, no_weight_decay_names
from .mlp import GatedMLP, gated_mlp_width
from .norm import RMSNorm, create_norm
from .pooling import POOLINGS, pool_sequence
from .ss2d import SS2D, LayerNorm2d, Linear2d
from .unet import DownPool, PooledUNet, UNetState, UpPool

__all__ = [
    "POOLINGS",
    "SS2D",
    "AttentionState",
    "BiMamba",
    "Block",
    "CausalSelfAttention",
    "DownPool",
    "GatedMLP",
    "LayerNorm2d",
    "Linear2d",
    "Mamba",
    "MambaLayerState",
    "NonCausalBlock",
    "PooledUNet",
    "RMSNorm",
    "ResidualBlock",
    "UNetState",
    "UpPool",
    "create_norm",
    "gated_mlp_width",
    "no_weight_decay_names",
    "padded_reverse_index",
    "pool_sequence",
    "reverse_padded",
]
