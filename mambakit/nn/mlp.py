"""The gated MLP that follows a mixer inside a block (mamba-ssm's `GatedMLP`, the Transformer's feed-forward
half): fc1 to twice the hidden width, y * silu(gate), fc2 back. Parameter names and the hidden width's rounding
up to a multiple of 128 are mamba-ssm's, so its checkpoints with `d_intermediate > 0` map onto it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gated_mlp_width(d_intermediate: int, multiple_of: int = 128) -> int:
    """The hidden width mamba-ssm builds for `d_intermediate`: rounded up to a multiple of `multiple_of`."""
    return -(-d_intermediate // multiple_of) * multiple_of


class GatedMLP(nn.Module):
    """(…, d_model) -> (…, d_model) through a SiLU-gated hidden layer of `gated_mlp_width(d_intermediate)`."""

    def __init__(
        self,
        d_model: int,
        d_intermediate: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = gated_mlp_width(d_intermediate)
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))
