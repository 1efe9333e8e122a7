"""Argument checks shared by every backend: one place that turns bad arguments into clear errors.

Every op's tensors pass `check_tensors` first (torch tensors, real floating point, one device), so a list, an
integer tensor or a tensor on the wrong device is a ValueError naming the argument rather than a torch error
from deep inside a backend; the shape checks of each op follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError

#: The dtypes a decode step keeps its state in: the math is fp32 (float64 for a float64 state) whatever it is.
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class ScanShape:
    """Sizes of one selective-scan call, read off its arguments."""

    batch: int
    dim: int
    length: int
    d_state: int
    groups: int
    """Channel groups sharing the per-step B and/or C; 0 when both are time-invariant (dim, N)."""

    @property
    def time_invariant(self) -> bool:
        return self.groups == 0


def check_tensors(op: str, tensors: dict[str, object], optional: dict[str, object] | None = None) -> None:
    """Each of `tensors` (and of `optional`, unless None) must be a real floating-point torch.Tensor, and all of
    them on one device; raise a UserError naming the first argument that is not."""
    present = {**tensors, **{name: value for name, value in (optional or {}).items() if value is not None}}
    for name, value in present.items():
        if not isinstance(value, Tensor):
            raise UserError(
                f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}; convert it with torch.as_tensor"
            )
        if value.is_complex():
            raise UserError(f"{op}: {name} must be real, got {value.dtype}: complex tensors are not supported")
        if not value.is_floating_point():
            raise UserError(
                f"{op}: {name} must be a floating-point tensor (float32, bfloat16, float16 or float64), "
                f"got {value.dtype}"
            )
    _expect_one_device(op, present)


def _expect_one_device(op: str, tensors: dict[str, object]) -> None:
    named = [(name, value.device) for name, value in tensors.items() if isinstance(value, Tensor)]
    for name, device in named[1:]:
        if device != named[0][1]:
            first, first_device = named[0]
            raise UserError(
                f"{op}: all inputs must be on one device, but {first} is on {first_device} and {name} on {device}; "
                "move them with .to(device)"
            )


def _expect(name: str, tensor: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != shape:
        raise UserError(f"{name} must have shape {meaning} = {shape}, got {tuple(tensor.shape)}")


def _bc_groups(name: str, BC: Tensor, batch: int, dim: int, d_state: int, length: int) -> int:
    """B's or C's layout, checked: 0 for time-invariant (dim, N), else its number of channel groups."""
    if BC.dim() == 2:
        _expect(name, BC, (dim, d_state), "(dim, N) for a time-invariant scan")
        return 0
    if BC.dim() == 3:
        _expect(name, BC, (batch, d_state, length), "(batch, N, L)")
        return 1
    if BC.dim() == 4:
        groups = BC.shape[1]
        if groups == 0 or dim % groups != 0:
            raise UserError(
                f"{name}'s group count ({groups}) must divide dim ({dim}); {name} has shape {tuple(BC.shape)}"
            )
        _expect(name, BC, (batch, groups, d_state, length), "(batch, groups, N, L)")
        return groups
    raise UserError(f"{name} must have shape (batch, N, L), (batch, groups, N, L) or (dim, N); got {tuple(BC.shape)}")


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
    """Validate selective_scan's arguments and return their sizes; raise ValueError naming the culprit.

    B and C each have their own layout, as in mamba-ssm: time-invariant (dim, N), or per step (batch, N, L) or
    (batch, groups, N, L); when both are per step they share one group count, as mamba-ssm's kernels require.
    """
    check_tensors(
        "selective_scan",
        {"u": u, "delta": delta, "A": A, "B": B, "C": C},
        {"D": D, "z": z, "delta_bias": delta_bias, "initial_state": initial_state},
    )
    if u.dim() != 3:
        raise UserError(f"u must have shape (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if batch == 0 or dim == 0:
        raise UserError(f"u must hold at least one sequence of at least one channel, got shape {tuple(u.shape)}")
    _expect("delta", delta, (batch, dim, length), "(batch, dim, L)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise UserError(f"A must have shape (dim, N) = ({dim}, N), got {tuple(A.shape)}")
    d_state = A.shape[1]
    B_groups = _bc_groups("B", B, batch, dim, d_state, length)
    C_groups = _bc_groups("C", C, batch, dim, d_state, length)
    if B_groups and C_groups and B_groups != C_groups:
        raise UserError(
            f"B and C vary per step in different channel groups (B {tuple(B.shape)}, C {tuple(C.shape)}); give "
            "them one group count, or make one of them time-invariant (dim, N)"
        )
    for name, optional in (("D", D), ("delta_bias", delta_bias)):
        if optional is not None:
            _expect(name, optional, (dim,), "(dim,)")
    if z is not None:
        _expect("z", z, (batch, dim, length), "(batch, dim, L)")
    if initial_state is not None:
        _expect("initial_state", initial_state, (batch, dim, d_state), "(batch, dim, N)")
    return ScanShape(batch, dim, length, d_state, max(B_groups, C_groups))


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
    state_batch_indices: Tensor | None = None,
) -> int:
    """Validate selective_state_update's arguments; return the number of B/C groups."""
    check_tensors(
        "selective_state_update",
        {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C},
        {"D": D, "z": z, "dt_bias": dt_bias},
    )
    if state.dtype not in STATE_DTYPES:
        raise UserError(f"state must be float32, float16 or bfloat16 (or float64), got {state.dtype}")
    if state.dim() != 3:
        raise UserError(f"state must have shape (batch, dim, N), got {tuple(state.shape)}")
    _, dim, d_state = state.shape
    batch = state.shape[0] if state_batch_indices is None else _check_state_batch_indices(state_batch_indices, x, state)
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
    return groups


def _check_state_batch_indices(indices: object, x: Tensor, state: Tensor) -> int:
    """The batch size of a step whose states are rows `indices` of a larger cache: (batch,) integers on the state's
    device, negative ones marking padding rows. Their range is checked on the CPU only: on a GPU that would cost a
    device sync per decode step."""
    if not isinstance(indices, Tensor):
        raise UserError(f"state_batch_indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise UserError(f"state_batch_indices must be an int32 or int64 tensor, got {indices.dtype}")
    batch = x.shape[0] if x.dim() > 0 else 0
    if tuple(indices.shape) != (batch,):
        raise UserError(
            f"state_batch_indices must have shape (batch,) = ({batch},), one row of state per row of x, "
            f"got {tuple(indices.shape)}"
        )
    _expect_one_device("selective_state_update", {"state": state, "state_batch_indices": indices})
    if indices.device.type == "cpu" and batch and int(indices.max()) >= state.shape[0]:
        raise UserError(
            f"state_batch_indices must index rows of state (0..{state.shape[0] - 1}, or negative for padding), "
            f"got {int(indices.max())}"
        )
    return batch
