"""Causal multi-head self-attention as a sequence mixer beside Mamba: the attention layers of a Transformer or of a
hybrid (Park et al.'s MambaFormer), with the same contract as `Mamba`: forward over (b, l, d_model), optionally
continuing from and filling a recurrent state, and a one-position `step`.

The recurrent state is a key/value cache of fixed size (`max_length` positions) plus the number of positions
filled, a tensor: `step` writes its key and value in place at that index and attends with a mask, so the step's
kernels and shapes never change and it can be replayed as a CUDA graph, as the Mamba step is.

Positions: rotary embeddings (RoPE, the rotate-half form of GPT-NeoX and LLaMA) on queries and keys, or none
(position information then comes from elsewhere: a learned absolute embedding, or a Mamba layer before the first
attention layer, as in MambaFormer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

#: Position schemes of the attention mixer.
POSITIONS = ("rope", "none")


@dataclass
class AttentionState:
    """Key/value cache of one attention mixer: keys and values (batch, n_heads, max_length, head_dim) and the
    number of positions filled (a long scalar tensor on the cache's device)."""

    keys: Tensor
    values: Tensor
    length: Tensor

    def detach(self) -> AttentionState:
        """The same state cut from the autograd graph."""
        return AttentionState(self.keys.detach(), self.values.detach(), self.length)


def rotate(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotary position embedding of x (b, h, l, head_dim) at `positions` (l,) (rotate-half form): each pair of
    channels (i, i + head_dim/2) turns by the angle position * base^(-2i/head_dim)."""
    half = x.shape[-1] // 2
    precision = torch.promote_types(x.dtype, torch.float32)  # angles at long positions need at least fp32
    frequencies = base ** (-torch.arange(half, device=x.device, dtype=precision) / half)
    angles = positions.to(precision)[:, None] * frequencies[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`: one fused projection to queries,
    keys and values, rotary positions or none, and an output projection. Parameter names and the projection's
    [q | k | v] row layout are those of mamba-ssm's `MHA` (in_proj, out_proj), as is the rotary form (full
    head dimension, not interleaved), so its hybrid checkpoints can map onto this module."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 8,
        positions: str = "rope",
        rope_base: float = 10000.0,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise UserError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
        if positions not in POSITIONS:
            raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        if positions == "rope" and self.head_dim % 2:
            raise UserError(f"rotary positions need an even head dimension, got {self.head_dim}")
        self.positions, self.rope_base = positions, rope_base
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)

    def allocate_state(
        self, batch: int, max_length: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AttentionState:
        """An empty cache for `batch` sequences of up to `max_length` positions."""
        weight = self.in_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        shape = (batch, self.n_heads, max_length, self.head_dim)
        return AttentionState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros((), dtype=torch.long, device=device),
        )

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, l, d_model) -> queries, keys, values (b, h, l, head_dim)."""
        batch, length, _ = x.shape
        qkv = self.in_proj(x).view(batch, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        batch, _, length, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, hidden_states: Tensor, state: AttentionState | None = None) -> Tensor:
        """hidden_states (b, l, d_model) -> (b, l, d_model). With `state`, the positions continue from the cache
        (which they also attend to) and their keys and values are appended to it."""
        q, k, v = self._heads(hidden_states)
        length = q.shape[2]
        start = 0 if state is None else int(state.length)
        if state is not None and start + length > state.keys.shape[2]:
            raise UserError(
                f"the attention cache holds {state.keys.shape[2]} positions; {start} are filled and {length} more "
                f"do not fit: allocate the state with a larger max_length"
            )
        if self.positions == "rope":
            positions = torch.arange(start, start + length, device=q.device)
            q, k = rotate(q, positions, self.rope_base), rotate(k, positions, self.rope_base)
        if state is None:
            return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        state.keys[:, :, start : start + length] = k
        state.values[:, :, start : start + length] = v
        state.length.fill_(start + length)
        if start == 0:
            return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        keys, values = state.keys[:, :, : start + length], state.values[:, :, : start + length]
        # Query i (at position start + i) sees every cached position and the new ones up to its own.
        mask = torch.ones(length, start + length, dtype=torch.bool, device=q.device).tril(start)
        return self._merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

    def step(self, hidden_states: Tensor, state: AttentionState) -> Tensor:
        """One position: hidden_states (b, d_model) -> (b, d_model); its key and value are written into the cache
        at `state.length`, which is then advanced, all in place (no host synchronisation, fixed shapes)."""
        q, k, v = self._heads(hidden_states[:, None])
        position = state.length.reshape(1)
        if self.positions == "rope":
            q, k = rotate(q, position, self.rope_base), rotate(k, position, self.rope_base)
        state.keys.index_copy_(2, position, k)
        state.values.index_copy_(2, position, v)
        visible = torch.arange(state.keys.shape[2], device=q.device) <= position
        y = F.scaled_dot_product_attention(q, state.keys, state.values, attn_mask=visible[None, :])
        state.length.add_(1)
        return self._merge(y)[:, 0]
