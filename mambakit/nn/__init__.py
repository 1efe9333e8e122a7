"""Modules: the Mamba mixer with its recurrent step, pre-norm residual blocks, norms, and the bidirectional and
reverse-complement-equivariant wrappers."""

from .bidirectional import BiMamba, NonCausalBlock, padded_reverse_index, reverse_padded
from .block import Block
from .mixer import Mamba, MambaLayerState, no_weight_decay
from .norm import RMSNorm, create_norm
from .pooling import POOLINGS, pool_sequence
from .rc import (
    RCPSEmbedding,
    RCPSMixer,
    RCPSNorm,
    complement_table,
    rc_conjoin,
    rc_fold,
    rc_hidden,
    rc_logits,
    rc_pool,
    reverse_complement_ids,
)

__all__ = [
    "POOLINGS", "BiMamba", "Block", "Mamba", "MambaLayerState", "NonCausalBlock", "RCPSEmbedding", "RCPSMixer",
    "RCPSNorm", "RMSNorm", "complement_table", "create_norm", "no_weight_decay", "padded_reverse_index",
    "pool_sequence", "rc_conjoin", "rc_fold", "rc_hidden", "rc_logits", "rc_pool", "reverse_complement_ids",
    "reverse_padded",
]
