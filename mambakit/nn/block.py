"""Pre-norm residual block around a mixer, as in mamba-ssm: the residual stream can stay in fp32."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from ..ops import add_rms_norm
from .mixer import MambaLayerState
from .norm import RMSNorm


class ResidualBlock(nn.Module):
    """What every pre-norm residual block shares: residual = hidden + residual; hidden = mixer(norm(residual)).
    Blocks return (hidden, residual), so that the last add happens once, before the final norm. FSDP shards
    each block as a unit."""

    mixer: Any  # an nn.Module; a causal block's mixer also has `step`

    def __init__(self, mixer: nn.Module, norm: nn.Module, residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.residual_in_fp32 = residual_in_fp32

    def _pre_norm(self, hidden_states: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if isinstance(self.norm, RMSNorm):  # one kernel when decoding on the GPU
            return add_rms_norm(
                hidden_states,
                residual,
                self.norm.weight,
                self.norm.eps,
                self.residual_in_fp32,
                backend=getattr(self.mixer, "scan_backend", "auto"),
            )
        residual = hidden_states if residual is None else residual + hidden_states
        normed = self.norm(residual.to(cast(Tensor, self.norm.weight).dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return normed, residual


class Block(ResidualBlock):
    """The causal block: its mixer takes a recurrent state and has a one-position `step`."""

    def forward(
        self, hidden_states: Tensor, residual: Tensor | None = None, state: MambaLayerState | None = None
    ) -> tuple[Tensor, Tensor]:
        """hidden_states, residual: (b, l, d_model)."""
        normed, residual = self._pre_norm(hidden_states, residual)
        return self.mixer(normed, state), residual

    def step(self, hidden_states: Tensor, residual: Tensor | None, state: MambaLayerState) -> tuple[Tensor, Tensor]:
        """One position: hidden_states, residual (b, d_model)."""
        normed, residual = self._pre_norm(hidden_states, residual)
        return self.mixer.step(normed, state), residual
