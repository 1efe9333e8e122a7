"""What the copied mamba-ssm op tests call: mamba-ssm's function signatures over mambakit's ops, on the backend and
device chosen for the run, and the split of upstream's full parameter grids into a fast part and a `slow` rest.

MAMBAKIT_OPS_TEST_BACKEND names the mambakit backend under test: `torch` (the default) and `reference` run on the
CPU; `triton`, `cuda` and `mamba_ssm` run on the GPU, where the same files run unchanged, e.g. on an H200. `upstream`
calls mamba-ssm's own functions directly, not through mambakit: the pass count the backends are held to.

    MAMBAKIT_OPS_TEST_BACKEND=triton python -m pytest tests/third_party/mamba_ssm_ops    # the fast part
    MAMBAKIT_OPS_TEST_BACKEND=triton MAMBAKIT_OPS_TEST_FULL_GRID=1 python -m pytest tests/third_party/mamba_ssm_ops

The second runs upstream's full grids; without MAMBAKIT_OPS_TEST_FULL_GRID=1, `make test` (which runs `slow` tests)
leaves out the rest of the scan's grid, 20-odd minutes on a CPU.
"""

from __future__ import annotations

import os

import pytest
from torch import Tensor

from mambakit import ops

BACKEND = os.environ.get("MAMBAKIT_OPS_TEST_BACKEND", "torch")
DEVICE = "cpu" if BACKEND in ("torch", "reference") else "cuda"
#: mamba-ssm's own kernels, called directly (mamba-ssm's own pass count, the baseline).
UPSTREAM = "upstream"


def _unavailable_reason() -> str | None:
    if BACKEND == UPSTREAM:
        try:
            import mamba_ssm.ops.selective_scan_interface
            import mamba_ssm.ops.triton.selective_state_update  # noqa: F401
        except Exception as error:  # a missing or broken build: report it as the skip reason
            return f"mamba-ssm cannot be imported: {type(error).__name__}: {error}"
        return None
    if BACKEND not in ops.list_backends():
        return f"MAMBAKIT_OPS_TEST_BACKEND={BACKEND!r} is no mambakit backend; choose one of {ops.list_backends()}"
    reason = ops.available_backends(DEVICE)[BACKEND]
    return None if reason is None else f"backend {BACKEND!r} cannot run on {DEVICE}: {reason}"


#: Applied to every copied test module: the GPU backends are skipped (with the reason) where they cannot run.
requires_backend = pytest.mark.skipif(_unavailable_reason() is not None, reason=str(_unavailable_reason()))


#: Set to 1 to collect the rest of the grids given with `opt_in`.
FULL_GRID_VARIABLE = "MAMBAKIT_OPS_TEST_FULL_GRID"


def full_grid(values: list, fast: list, opt_in: bool = False) -> list:
    """Upstream's parameter values, all of them, the commented-out ones restored: those in `fast` run by default,
    the others are marked `slow`. With `opt_in` the others are collected only where MAMBAKIT_OPS_TEST_FULL_GRID=1:
    18 000 skipped tests would cost more than the fast part."""
    if opt_in and os.environ.get(FULL_GRID_VARIABLE) != "1":
        values = fast
    return [value if value in fast else pytest.param(value, marks=pytest.mark.slow) for value in values]


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's selective_scan_fn: mambakit.ops.selective_scan on the backend under test."""
    if BACKEND == UPSTREAM:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as upstream

        return upstream(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return ops.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=return_last_state, backend=BACKEND
    )


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: Tensor | None = None,
) -> Tensor:
    """mamba-ssm's selective_state_update: mambakit.ops.selective_state_update on the backend under test.

    mambakit's step is Mamba-1's, (batch, dim, N). mamba-ssm's heads layout (Mamba-2's: state (batch, nheads,
    headdim, N), x, dt, z (batch, nheads, headdim), A (nheads, headdim, N), D, dt_bias (nheads, headdim)) is the
    same memory with dim = nheads * headdim: B/C groups of nheads/ngroups heads are groups of dim/ngroups channels.
    The state is flattened as a view, so mambakit updates the caller's state in place."""
    if BACKEND == UPSTREAM:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as upstream

        return upstream(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    if state.dim() == 3:
        return ops.selective_state_update(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, backend=BACKEND
        )
    batch, nheads, headdim = x.shape
    flat_state = state.view(state.shape[0], nheads * headdim, state.shape[-1])
    out = ops.selective_state_update(
        flat_state,
        x.flatten(1),
        dt.flatten(1),
        A.flatten(0, 1),
        B,
        C,
        None if D is None else D.flatten(),
        None if z is None else z.flatten(1),
        None if dt_bias is None else dt_bias.flatten(),
        dt_softplus,
        state_batch_indices,
        backend=BACKEND,
    )
    return out.view(batch, nheads, headdim)
