"""A SaShiMi-style multi-scale (pooled) U-Net over Mamba blocks, with a streaming step: the audio backbone of the
Mamba paper (§4.4), reusable by any domain whose sequences are long and smooth (raw waveforms).

    x (b, L, d) -> stage 0 (blocks at L, width d) -> DownPool p0 -> stage 1 (L/p0, width e*d) -> DownPool p1
      -> centre (L/(p0*p1), width e^2*d) -> UpPool p1 (+ skip) -> stage 1' -> UpPool p0 (+ skip) -> stage 0' -> norm

DownPool: p consecutive positions concatenated, then a Linear to `expand` times the width. UpPool: a Linear to p
positions of the finer width, shifted right by one coarse step (zeros first), so that fine position t only sees
coarse steps that ended before it: the whole network is causal. Each stage is `n_layers` pre-norm residual Mamba
blocks; `selective` says per level (outermost first, centre last) whether they are selective (Mamba) or
time-invariant (S4D-like, `selective=False`): the paper found LTI better next to the raw waveform.

`step` runs one position in O(1): stage k only runs every p_0 * ... * p_{k-1} positions, exactly as SaShiMi's
streaming step (DownPool buffers the fine inputs of one coarse step; UpPool hands out the fine outputs of the last
complete coarse step), so generation costs the same at sample 1 and at sample 1,000,000. The buffers are fixed
tensors written in place, and which stages run depends only on the position modulo `stride`: one CUDA graph per
phase replays the step exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .block import Block
from .mixer import Mamba, MambaLayerState
from .norm import create_norm


class DownPool(nn.Module):
    """(b, L, d) -> (b, L/pool, expand*d): `pool` consecutive positions concatenated, then a Linear."""

    def __init__(self, d_model: int, pool: int, expand: int) -> None:
        super().__init__()
        self.pool, self.width = pool, d_model
        self.linear = nn.Linear(pool * d_model, expand * d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return self.linear(x.reshape(batch, length // self.pool, self.pool * width))


class UpPool(nn.Module):
    """(b, L/pool, D) -> (b, L, D/expand): a Linear to `pool` fine positions, shifted right by one coarse step."""

    def __init__(self, d_model: int, pool: int, expand: int) -> None:
        super().__init__()
        self.pool, self.d_out = pool, d_model // expand
        self.linear = nn.Linear(d_model, pool * self.d_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, coarse, _ = x.shape
        # Coarse step j becomes the fine positions of step j + 1: no fine position sees its own coarse step.
        shifted = F.pad(self.linear(x)[:, :-1], (0, 0, 1, 0))
        return shifted.reshape(batch, coarse * self.pool, self.d_out)

    def fine(self, coarse: Tensor) -> Tensor:
        """One coarse vector (b, D) -> the `pool` fine vectors (b, pool, D/expand) it hands out next."""
        return self.linear(coarse).view(coarse.shape[0], self.pool, self.d_out)


class Stage(nn.Module):
    """`n_layers` pre-norm residual Mamba blocks at one resolution; returns the residual stream (no final norm)."""

    def __init__(
        self, d_model: int, n_layers: int, selective: bool, d_state: int, d_conv: int, expand: int, scan_backend: str
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(
                Mamba(d_model, d_state, d_conv, expand, selective=selective, scan_backend=scan_backend),
                create_norm(d_model, True, 1e-5),
            )
            for _ in range(n_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        hidden, residual = x, None
        for block in self.blocks:
            hidden, residual = block(hidden, residual)
        return hidden if residual is None else hidden + residual

    def _blocks(self) -> list[Block]:
        return [cast(Block, block) for block in self.blocks]

    def step(self, x: Tensor, states: list[MambaLayerState]) -> Tensor:
        hidden, residual = x, None
        for block, state in zip(self._blocks(), states, strict=True):
            hidden, residual = block.step(hidden, residual, state)
        return hidden if residual is None else hidden + residual

    def allocate_state(
        self, batch: int, device: torch.device | None, dtype: torch.dtype | None
    ) -> list[MambaLayerState]:
        return [block.mixer.allocate_state(batch, device, dtype) for block in self._blocks()]


@dataclass
class UNetState:
    """Streaming state: every block's recurrent state; per pooling level the fine inputs buffered for the next
    coarse step (b, pool, width) and the fine outputs still to hand out from the last one (b, pool, width/expand);
    and the position (samples stepped so far), which says which buffer slots and stages the next step uses."""

    down: list[list[MambaLayerState]]
    up: list[list[MambaLayerState]]
    centre: list[MambaLayerState]
    buffered: list[Tensor]
    pending: list[Tensor]
    position: int = 0


class PooledUNet(nn.Module):
    """The SaShiMi U-Net over Mamba blocks (see the module docstring). Input and output (b, L, d_model)."""

    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 2,
        pools: Sequence[int] = (4, 4),
        expand: int = 2,
        selective: Sequence[bool] | bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        mamba_expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        levels = len(pools) + 1
        selective = [selective] * levels if isinstance(selective, bool) else list(selective)
        if len(selective) != levels:
            raise UserError(f"selective needs one value per level ({levels}: outermost first), got {selective}")
        if any(p < 1 for p in pools) or expand < 1:
            raise UserError(f"pools and expand must be positive integers, got {list(pools)} and {expand}")
        self.pools = list(pools)
        widths = [d_model * expand**i for i in range(levels)]

        def stage(level: int) -> Stage:
            return Stage(widths[level], n_layers, selective[level], d_state, d_conv, mamba_expand, scan_backend)

        self.down_stages = nn.ModuleList(stage(i) for i in range(len(pools)))
        self.down_pools = nn.ModuleList(DownPool(widths[i], p, expand) for i, p in enumerate(pools))
        self.centre = stage(len(pools))
        self.up_pools = nn.ModuleList(UpPool(widths[i + 1], p, expand) for i, p in enumerate(pools))
        self.up_stages = nn.ModuleList(stage(i) for i in range(len(pools)))
        self.norm_f = create_norm(d_model, True, 1e-5)

    @property
    def stride(self) -> int:
        """Positions per step of the coarsest level: forward pads the length to a multiple of it."""
        return math.prod(self.pools)

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d_model) -> (b, L, d_model); any L (padded on the right internally, which a causal network
        cannot see)."""
        length = x.shape[1]
        padded = -(-length // self.stride) * self.stride
        h = F.pad(x, (0, 0, 0, padded - length))
        skips = []
        for stage, pool in zip(self.down_stages, self.down_pools, strict=True):
            h = stage(h)
            skips.append(h)
            h = pool(h)
        h = self.centre(h)
        for level in reversed(range(len(self.pools))):
            h = self.up_stages[level](self.up_pools[level](h) + skips[level])
        return self.norm_f(h[:, :length])

    def allocate_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> UNetState:
        """A zero state for `batch` streams: empty pooling buffers, zero pending outputs (the shift's zeros)."""
        weight = next(self.norm_f.parameters())
        device, dtype = device or weight.device, dtype or weight.dtype
        return UNetState(
            down=[
                self._stage(self.down_stages, i).allocate_state(batch, device, dtype) for i in range(len(self.pools))
            ],
            up=[self._stage(self.up_stages, i).allocate_state(batch, device, dtype) for i in range(len(self.pools))],
            centre=self.centre.allocate_state(batch, device, dtype),
            buffered=[
                torch.zeros(batch, pool, cast(DownPool, self.down_pools[i]).width, device=device, dtype=dtype)
                for i, pool in enumerate(self.pools)
            ],
            pending=[
                torch.zeros(batch, pool, self._up_pool(i).d_out, device=device, dtype=dtype)
                for i, pool in enumerate(self.pools)
            ],
        )

    @staticmethod
    def _stage(stages: nn.ModuleList, level: int) -> Stage:
        return cast(Stage, stages[level])

    def _up_pool(self, level: int) -> UpPool:
        return cast(UpPool, self.up_pools[level])

    def step(self, x: Tensor, state: UNetState) -> Tensor:
        """One position: x (b, d_model) -> (b, d_model); `state` advanced by one position."""
        out = self.norm_f(self._step(0, x, state, state.position))
        state.position += 1
        return out

    def _step(self, level: int, x: Tensor, state: UNetState, position: int) -> Tensor:
        """`position` counts the steps of this level."""
        if level == len(self.pools):
            return self.centre.step(x, state.centre)
        pool, phase = self.pools[level], position % self.pools[level]
        h = self._stage(self.down_stages, level).step(x, state.down[level])
        up_input = state.pending[level][:, phase] + h
        state.buffered[level][:, phase] = h
        if phase == pool - 1:
            down_pool = cast(DownPool, self.down_pools[level])
            coarse = down_pool.linear(state.buffered[level].flatten(1))
            out = self._step(level + 1, coarse, state, position // pool)
            state.pending[level].copy_(self._up_pool(level).fine(out))
        return self._stage(self.up_stages, level).step(up_input, state.up[level])
