"""The `mamba_ssm` backend: the official CUDA kernels behind mambakit's op contract.

mamba-ssm's Mamba-1 scan has no initial state (the registry sends such calls elsewhere, see Backend.lacks) and
does not backpropagate through the last state it returns: that gradient is refused with a message naming the
backends that can. Two cases run on the Triton kernels instead, where mamba-ssm's kernel gives wrong results (its
own op tests fail on them, bench/results/op_tests_14fa1ee.md): a time-invariant B with a C in several groups (its
kernel reads the group count off B; its reference, and mambakit, accept the pair), and the last state after a
time-invariant B (its kernel leaves B's factor out of the state it returns, state-spaces/mamba pull request #371).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .backends import BackendUnavailableError, alert_not_deterministic

_USE_INSTEAD = "use backend='triton' or backend='torch'"
_BACKWARD = "mamba-ssm's selective-scan backward"
_DETERMINISTIC_INSTEAD = "use backend='cuda' (deterministic in this mode), 'torch' or 'auto'"


class _LastStateWithoutGradient(torch.autograd.Function):
    """Pass the last state through, and refuse a non-zero gradient for it instead of dropping it silently."""

    @staticmethod
    def forward(ctx: Any, last_state: Tensor, anchor: Tensor) -> Tensor:
        return last_state.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[None, None]:
        if grad is not None and bool(grad.ne(0).any()):
            raise BackendUnavailableError(
                f"the mamba_ssm backend cannot backpropagate through the returned last state; {_USE_INSTEAD}"
            )
        return None, None


def selective_scan_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's selective_scan_fn with mambakit's argument checks already done by the caller."""
    if B.dim() == 2 and (return_last_state or (C.dim() == 4 and C.shape[1] > 1)):
        from .triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, None, return_last_state)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z)):
        alert_not_deterministic(_BACKWARD, _DETERMINISTIC_INSTEAD)
    # Its kernels take any batch/channel strides with unit-stride steps (selective_scan_fn copies others) and
    # want a (dim, N) B or C in fp32 like A, a per-step one in u's dtype.
    B, C = (BC.float().contiguous() if BC.dim() == 2 else BC.to(u.dtype) for BC in (B, C))
    result = selective_scan_fn(
        u,
        delta,
        A.float().contiguous(),
        B,
        C,
        None if D is None else D.float(),
        z,
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
        return_last_state,
    )
    if not return_last_state:
        return result
    out, last_state = result
    last_state = last_state.float()
    if torch.is_grad_enabled() and out.requires_grad:
        last_state = _LastStateWithoutGradient.apply(last_state, out)
    return out, last_state


def selective_state_update_mamba_ssm(
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
    """mamba-ssm's Triton decode step; state updated in place, in its own dtype."""
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    # Passed only when given: mamba-ssm releases before 2.2.3 have no such argument.
    indexed = {} if state_batch_indices is None else {"state_batch_indices": state_batch_indices}
    return selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, **indexed)


def _kernel_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, bias: Tensor | None
) -> tuple[Tensor | None, ...]:
    """The scan's inputs as mamba-ssm's kernels take them (as its SelectiveScanFn makes them): unit-stride steps,
    per-step B/C in u's dtype with a group axis, A, D and the bias fp32."""

    def steps(t: Tensor) -> Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    B, C = (steps(BC.to(u.dtype)).unsqueeze(1) if BC.dim() == 3 else steps(BC.to(u.dtype)) for BC in (B, C))
    return (
        steps(u),
        steps(delta),
        A.float().contiguous(),
        B,
        C,
        None if D is None else D.float().contiguous(),
        None if z is None else steps(z),
        None if bias is None else bias.float(),
    )


def selective_scan_fwd_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """mamba-ssm's scan forward alone, for a caller that keeps its own inputs (see `mambakit.ops.scan_parts`):
    (out, its chunk states [and the output before the gate, which its backward reads]). A time-invariant B runs
    on the Triton kernels, as in `selective_scan_mamba_ssm`."""
    if B.dim() == 2:
        from .triton_scan import selective_scan_fwd_triton

        return selective_scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_cuda

    out, chunk_states, *gated = selective_scan_cuda.fwd(
        *_kernel_inputs(u, delta, A, B, C, D, z, delta_bias), delta_softplus
    )
    return (gated[0], (chunk_states, out)) if z is not None else (out, (chunk_states,))


def selective_scan_bwd_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    residuals: tuple[Tensor, ...],
    dout: Tensor,
) -> tuple[Tensor | None, ...]:
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of `selective_scan_fwd_mamba_ssm`'s output,
    from the same inputs and its residuals."""
    if B.dim() == 2:
        from .triton_scan import selective_scan_bwd_triton

        return selective_scan_bwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dout)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_cuda

    alert_not_deterministic(_BACKWARD, _DETERMINISTIC_INSTEAD)
    chunk_states, *ungated = residuals
    du, ddelta, dA, dB, dC, dD, ddelta_bias, *dz = selective_scan_cuda.bwd(
        *_kernel_inputs(u, delta, A, B, C, D, z, delta_bias),
        dout if dout.stride(-1) == 1 else dout.contiguous(),
        chunk_states,
        ungated[0] if ungated else None,
        None,
        delta_softplus,
        False,
    )
    dB, dC = (grad.reshape(BC.shape).to(BC.dtype) for grad, BC in ((dB, B), (dC, C)))
    return (
        du,
        ddelta,
        dA.to(A.dtype),
        dB,
        dC,
        None if D is None else dD.to(D.dtype),
        dz[0] if z is not None else None,
        None if delta_bias is None else ddelta_bias.to(delta_bias.dtype),
    )
