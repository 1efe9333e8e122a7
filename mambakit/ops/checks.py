"""Argument checks shared by every scan backend: one place that turns bad shapes into clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError


@dataclass(frozen=True)
class ScanShape:
    """Sizes of one selective-scan call, read off its arguments."""

    batch: int
    dim: int
    length: int
    d_state: int
    groups: int
    """Channel groups sharing B and C; 0 when B and C are time-invariant (dim, N)."""

    @property
    def time_invariant(self) -> bool:
        return self.groups == 0


def _expect(name: str, tensor: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != shape:
        raise UserError(f"{name} must have shape {meaning} = {shape}, got {tuple(tensor.shape)}")


def _expect_float(name: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise UserError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.is_complex():
        raise UserError(f"{name} must be real: complex selective scans are not supported")


def check_scan_args(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
) -> ScanShape:
    """Validate selective_scan's arguments and return their sizes; raise ValueError naming the culprit."""
    for name, tensor in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(tensor, Tensor):
            raise UserError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        _expect_float(name, tensor)
    if u.dim() != 3:
        raise UserError(f"u must have shape (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if batch == 0 or dim == 0:
        raise UserError(f"u must hold at least one sequence of at least one channel, got shape {tuple(u.shape)}")
    _expect("delta", delta, (batch, dim, length), "(batch, dim, L)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise UserError(f"A must have shape (dim, N) = ({dim}, N), got {tuple(A.shape)}")
    d_state = A.shape[1]
    if B.dim() != C.dim():
        raise UserError(f"B and C must have the same layout, got B {tuple(B.shape)} and C {tuple(C.shape)}")
    if B.dim() == 2:
        _expect("B", B, (dim, d_state), "(dim, N) for a time-invariant scan")
        _expect("C", C, (dim, d_state), "(dim, N) for a time-invariant scan")
        groups = 0
    elif B.dim() == 3:
        _expect("B", B, (batch, d_state, length), "(batch, N, L)")
        _expect("C", C, (batch, d_state, length), "(batch, N, L)")
        groups = 1
    elif B.dim() == 4:
        groups = B.shape[1]
        if groups == 0 or dim % groups != 0:
            raise UserError(f"B's group count ({groups}) must divide dim ({dim}); B has shape {tuple(B.shape)}")
        _expect("B", B, (batch, groups, d_state, length), "(batch, groups, N, L)")
        _expect("C", C, (batch, groups, d_state, length), "(batch, groups, N, L)")
    else:
        raise UserError(
            f"B and C must have shape (batch, N, L), (batch, groups, N, L) or (dim, N); got B {tuple(B.shape)}"
        )
    for name, optional in (("D", D), ("delta_bias", delta_bias)):
        if optional is not None:
            _expect_float(name, optional)
            _expect(name, optional, (dim,), "(dim,)")
    if z is not None:
        _expect_float("z", z)
        _expect("z", z, (batch, dim, length), "(batch, dim, L)")
    if initial_state is not None:
        _expect_float("initial_state", initial_state)
        _expect("initial_state", initial_state, (batch, dim, d_state), "(batch, dim, N)")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    if len(devices) > 1:
        raise UserError(f"all selective_scan inputs must be on one device, got {sorted(map(str, devices))}")
    return ScanShape(batch, dim, length, d_state, groups)


def check_state_update_args(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
) -> int:
    """Validate selective_state_update's arguments; return the number of B/C groups."""
    if state.dim() != 3:
        raise UserError(f"state must have shape (batch, dim, N), got {tuple(state.shape)}")
    batch, dim, d_state = state.shape
    _expect("x", x, (batch, dim), "(batch, dim)")
    _expect("dt", dt, (batch, dim), "(batch, dim)")
    _expect("A", A, (dim, d_state), "(dim, N)")
    if B.dim() == 2:
        groups = 1
        _expect("B", B, (batch, d_state), "(batch, N)")
        _expect("C", C, (batch, d_state), "(batch, N)")
    elif B.dim() == 3:
        groups = B.shape[1]
        if groups == 0 or dim % groups != 0:
            raise UserError(f"B's group count ({groups}) must divide dim ({dim})")
        _expect("B", B, (batch, groups, d_state), "(batch, groups, N)")
        _expect("C", C, (batch, groups, d_state), "(batch, groups, N)")
    else:
        raise UserError(f"B must have shape (batch, N) or (batch, groups, N), got {tuple(B.shape)}")
    for name, tensor in (("D", D), ("dt_bias", dt_bias)):
        if tensor is not None:
            _expect(name, tensor, (dim,), "(dim,)")
    if z is not None:
        _expect("z", z, (batch, dim), "(batch, dim)")
    if state.dtype != torch.float32 and state.dtype != torch.float64:
        raise UserError(f"state must be float32 (or float64), got {state.dtype}: the scan state is kept in fp32")
    return groups
