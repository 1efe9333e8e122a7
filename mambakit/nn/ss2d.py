"""SS2D, the 2-D selective-scan layer of VMamba (Liu et al. 2024), in its released `v05_noz` form:

    x (b, C, H, W) -> in_proj (1x1, C -> d_inner, no bias) -> depthwise 3x3 conv -> SiLU
      -> cross_scan: 4 sequences of length H*W (row-major, column-major, both reversed)
      -> per direction k: [dt, B, C] = x_proj_weight[k] @ u_k;  delta = dt_projs_weight[k] @ dt
      -> ONE selective scan over the 4 directions as groups: (b, 4*d_inner, L), B and C (b, 4, N, L),
         delta bias dt_projs_bias, A = -exp(A_logs), skip Ds
      -> cross_merge (plain sum back to (b, d_inner, H, W)) -> out_norm (LayerNorm over d_inner)
      -> out_proj (1x1, d_inner -> C, no bias)

There is no gate (`_noz`). Parameter names and shapes follow VMamba's checkpoints: the four directions' weights are
stacked in single tensors, x_proj_weight (4, R + 2N, d_inner), dt_projs_weight (4, d_inner, R), dt_projs_bias
(4, d_inner), and A_logs (4 * d_inner, N) and Ds (4 * d_inner) flattened direction-major. With `channel_first`
the layer takes and returns (b, C, H, W); otherwise (b, H, W, C).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import cross_merge, cross_scan, selective_scan
from .mixer import dt_bias_init, s4d_real_log_A

#: Scan directions of the cross-scan.
DIRECTIONS = 4


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (b, C, H, W) tensor (parameters named like nn.LayerNorm's)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class Linear2d(nn.Linear):
    """A Linear applied to the channels of a (b, C, H, W) tensor, as a 1x1 convolution; its weight is stored 2-D
    (out, in) like nn.Linear's, as VMamba's checkpoints store it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class SS2D(nn.Module):
    """VMamba's 2-D selective-scan mixer (forward type v05_noz); see the module docstring."""

    NO_WEIGHT_DECAY: ClassVar[tuple[str, ...]] = ("A_logs", "Ds", "dt_projs_bias")

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        channel_first: bool = True,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.channel_first, self.scan_backend = channel_first, scan_backend
        projection = Linear2d if channel_first else nn.Linear
        self.in_proj = projection(d_model, self.d_inner, bias=False, **factory)
        inner, rank = self.d_inner, self.dt_rank
        padding = (d_conv - 1) // 2
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=padding, groups=inner, bias=conv_bias, **factory)
        # Per-direction projections, initialised as nn.Linear and Mamba's dt_proj are.
        bound = inner**-0.5
        self.x_proj_weight = nn.Parameter(
            torch.empty(DIRECTIONS, rank + 2 * d_state, inner, **factory).uniform_(-bound, bound)
        )
        dt_init_std = rank**-0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(
            torch.empty(DIRECTIONS, inner, rank, **factory).uniform_(-dt_init_std, dt_init_std)
        )
        dt_bias = dt_bias_init((DIRECTIONS, inner), dt_min, dt_max, dt_init_floor, device)
        self.dt_projs_bias = nn.Parameter(dt_bias.to(dtype or torch.float32))
        self.A_logs = nn.Parameter(s4d_real_log_A(DIRECTIONS * inner, d_state, device))
        self.Ds = nn.Parameter(torch.ones(DIRECTIONS * inner, device=device))
        self.out_norm = (LayerNorm2d if channel_first else nn.LayerNorm)(inner, **factory)
        self.out_proj = projection(inner, d_model, bias=False, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """(b, C, H, W) -> (b, C, H, W) with channel_first, else (b, H, W, C) -> (b, H, W, C)."""
        x = self.in_proj(x)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = F.silu(self.conv2d(x))
        batch, inner, height, width = x.shape
        length = height * width
        sequences = cross_scan(x, backend=self.scan_backend)  # (b, 4, d_inner, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", sequences, self.x_proj_weight)
        dts, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        # The SSM parameters enter in fp32 at least (float64 stays float64), whatever autocast does around them.
        state_dtype = torch.promote_types(self.A_logs.dtype, torch.float32)
        y = selective_scan(
            sequences.reshape(batch, DIRECTIONS * inner, length),
            delta.reshape(batch, DIRECTIONS * inner, length),
            -torch.exp(self.A_logs.to(state_dtype)),
            B.contiguous(),
            C.contiguous(),
            self.Ds.to(state_dtype),
            None,
            self.dt_projs_bias.reshape(-1).to(state_dtype),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        assert isinstance(y, Tensor)  # no last state was asked for
        y = cross_merge(y.view(batch, DIRECTIONS, inner, length), height, width, backend=self.scan_backend)
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y))
