"""Pre-norm residual block around a mixer, as in mamba-ssm: the residual stream can stay in fp32."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from ..errors import UserError
from ..ops import add_rms_norm
from .norm import RMSNorm


class ResidualBlock(nn.Module):
    """What every pre-norm residual block shares: residual = hidden + residual; hidden = mixer(norm(residual)),
    and with an MLP (as mamba-ssm's blocks with d_intermediate > 0) a second residual step through norm2 and the
    MLP. Blocks return (hidden, residual), so that the last add happens once, before the final norm. FSDP shards
    each block as a unit."""

    mixer: Any  # an nn.Module; a causal block's mixer also has `step`

    def __init__(
        self,
        mixer: nn.Module,
        norm: nn.Module,
        residual_in_fp32: bool = True,
        mlp: nn.Module | None = None,
        norm2: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (mlp is None) != (norm2 is None):
            raise UserError("a block's MLP comes with its own norm (norm2): pass both or neither")
        self.mixer = mixer
        self.norm = norm
        self.residual_in_fp32 = residual_in_fp32
        self.mlp = mlp
        self.norm2 = norm2

    def _pre_norm(
        self, hidden_states: Tensor, residual: Tensor | None, norm: nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        norm = self.norm if norm is None else norm
        if isinstance(norm, RMSNorm):  # one kernel when decoding on the GPU
            return add_rms_norm(
                hidden_states,
                residual,
                norm.weight,
                norm.eps,
                self.residual_in_fp32,
                backend=getattr(self.mixer, "scan_backend", "auto"),
            )
        residual = hidden_states if residual is None else residual + hidden_states
        normed = norm(residual.to(cast(Tensor, norm.weight).dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return normed, residual

    def _feed_forward(self, hidden_states: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """The MLP's residual step after the mixer's (nothing without an MLP)."""
        if self.mlp is None:
            return hidden_states, residual
        normed, residual = self._pre_norm(hidden_states, residual, self.norm2)
        return self.mlp(normed), residual


class Block(ResidualBlock):
    """The causal block: its mixer takes a recurrent state and has a one-position `step`."""

    def forward(
        self, hidden_states: Tensor, residual: Tensor | None = None, state: Any = None
    ) -> tuple[Tensor, Tensor]:
        """hidden_states, residual: (b, l, d_model)."""
        normed, residual = self._pre_norm(hidden_states, residual)
        return self._feed_forward(self.mixer(normed, state), residual)

    def step(self, hidden_states: Tensor, residual: Tensor | None, state: Any) -> tuple[Tensor, Tensor]:
        """One position: hidden_states, residual (b, d_model); `state` is the mixer's (Mamba or attention)."""
        normed, residual = self._pre_norm(hidden_states, residual)
        return self._feed_forward(self.mixer.step(normed, state), residual)
