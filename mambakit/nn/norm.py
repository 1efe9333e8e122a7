"""Normalisation layers for pre-norm residual blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.reference import rms_norm_ref


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias); statistics in fp32 whatever the input dtype."""

    def __init__(
        self, dim: int, eps: float = 1e-5, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm_ref(x, self.weight, self.eps)


def create_norm(
    dim: int, rms_norm: bool, eps: float, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """RMSNorm when `rms_norm`, else LayerNorm (with bias), both with epsilon `eps`."""
    if rms_norm:
        return RMSNorm(dim, eps, device=device, dtype=dtype)
    return nn.LayerNorm(dim, eps=eps, device=device, dtype=dtype)
