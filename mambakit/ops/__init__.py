"""Selective-scan ops (and the conv, norm and 2-D cross-scan around them): one API, several backends (see
`backends`), each checked against `reference`.

Shapes follow mamba-ssm: u, delta, z (batch, dim, L); A (dim, N); B, C each (batch, N, L), (batch, groups, N, L)
or (dim, N) for a time-invariant one; D, delta_bias (dim,); states (batch, dim, N), always fp32 math. Bad
arguments (a list, an integer tensor, tensors on two devices, a wrong shape) are ValueErrors naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from .backends import (
    ENV_VAR,
    Backend,
    BackendUnavailableError,
    NondeterministicError,
    available_backends,
    list_backends,
    register_backend,
    resolve_backend,
)
from .checks import check_scan_args, check_state_update_args, check_tensors
from .measured import ScanShape, forget_measurements, measurements, scan_shape


def selective_scan(
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
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan (Mamba's S6): h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t h_t + D u_t,
    out = y * silu(z). delta gets `delta_bias` added, then softplus when `delta_softplus`.

    B and C are each time-invariant (dim, N) or per step, (batch, N, L) or (batch, groups, N, L), as in mamba-ssm:
    one may be time-invariant while the other varies; two per-step ones share one group count.

    `initial_state` (batch, dim, N) starts the recurrence (zeros by default); with `return_last_state` the
    state after the last step comes back too, differentiable, so a sequence can be scanned in pieces.
    Returns out (batch, dim, L) in u's dtype [, last state (batch, dim, N) in fp32].
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs = frozenset({"initial_state"}) if initial_state is not None else frozenset()
    shape = None  # only `auto` measures, so only it needs the call's shape
    if backend == "auto":
        shape = scan_shape(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    implementation = resolve_backend(backend, u.device, "selective_scan", needs, shape).load("selective_scan")
    return implementation(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)


def selective_scan_parts(
    backend: str, device: torch.device, shape: ScanShape | None = None
) -> tuple[Callable[..., tuple[Tensor, tuple[Tensor, ...]]], Callable[..., tuple[Tensor | None, ...]]] | None:
    """The scan's forward and backward as two functions, from the backend that `backend` picks on `device` for a
    scan without an initial state (for "auto" given the scans' `shape`: the one measured fastest there), or None
    when it has no such pair (then use `selective_scan`). For a fused layer that keeps the scan's inputs itself, or
    recomputes them (`mamba_inner`):

        out, residuals = forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = backward(u, delta, A, B, C, D, z, delta_bias,
                                                               delta_softplus, residuals, dout)
    """
    chosen = resolve_backend(backend, device, "selective_scan", shape=shape)
    if "selective_scan_fwd" not in chosen.ops:
        return None
    return chosen.load("selective_scan_fwd"), chosen.load("selective_scan_bwd")


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
    backend: str = "auto",
) -> Tensor:
    """One recurrent step of the selective scan, O(1) in sequence length. `state` (batch, dim, N) is updated in
    place in its own dtype: fp32, or fp16/bf16 for a cache of half the memory (the step's math is fp32 either
    way, as in mamba-ssm), or float64. x, dt, z: (batch, dim); B, C: (batch, N) or (batch, groups, N).

    With `state_batch_indices` (batch,) int32/int64, `state` is a cache of any number of rows and row
    state_batch_indices[i] is batch element i's state (mamba-ssm's continuous batching); a negative index marks
    a padding element: no state is touched and its output is 0. Returns (batch, dim) in x's dtype."""
    check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    implementation = resolve_backend(backend, x.device, "selective_state_update").load("selective_state_update")
    return implementation(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)


def _check_conv(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> None:
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise UserError(f"weight must have shape (dim, width) = ({x.shape[1]}, width), got {tuple(weight.shape)}")
    if weight.shape[1] < 1:
        raise UserError("weight must have a width of at least 1 (shape (dim, width)), got width 0")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise UserError(f"bias must have shape (dim,) = ({x.shape[1]},), got {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise UserError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Depthwise causal 1-D convolution. x: (batch, dim, L); weight: (dim, width); `initial_states`
    (batch, dim, width-1) are the inputs before x (zeros by default). Returns (batch, dim, L)
    [and the final (batch, dim, width-1) inputs, to continue from]."""
    check_tensors("causal_conv1d", {"x": x, "weight": weight}, {"bias": bias, "initial_states": initial_states})
    if x.dim() != 3:
        raise UserError(f"x must have shape (batch, dim, L), got {tuple(x.shape)}")
    _check_conv(x, weight, bias, activation)
    if initial_states is not None and tuple(initial_states.shape) != (*x.shape[:2], weight.shape[1] - 1):
        raise UserError(
            f"initial_states must have shape (batch, dim, width-1) = {(*x.shape[:2], weight.shape[1] - 1)}, "
            f"got {tuple(initial_states.shape)}"
        )
    if x.shape[-1] == 0:  # nothing to convolve: the inputs before x are still the last ones
        width = weight.shape[1]
        final = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], width - 1)
        return (x.new_empty(x.shape), final.clone()) if return_final_states else x.new_empty(x.shape)
    implementation = resolve_backend(backend, x.device, "causal_conv1d").load("causal_conv1d")
    return implementation(x, weight, bias, activation, initial_states, return_final_states)


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
) -> Tensor:
    """One step of `causal_conv1d`. x: (batch, dim); conv_state (batch, dim, width-1), the last inputs,
    shifted in place to take x. Returns (batch, dim)."""
    check_tensors("causal_conv1d_update", {"x": x, "conv_state": conv_state, "weight": weight}, {"bias": bias})
    if x.dim() != 2:
        raise UserError(f"x must have shape (batch, dim), got {tuple(x.shape)}")
    _check_conv(x, weight, bias, activation)
    if tuple(conv_state.shape) != (*x.shape, weight.shape[1] - 1):
        raise UserError(
            f"conv_state must have shape (batch, dim, width-1) = {(*x.shape, weight.shape[1] - 1)}, "
            f"got {tuple(conv_state.shape)}"
        )
    implementation = resolve_backend(backend, x.device, "causal_conv1d_update").load("causal_conv1d_update")
    return implementation(x, conv_state, weight, bias, activation)


def add_rms_norm(
    hidden: Tensor,
    residual: Tensor | None,
    weight: Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """A pre-norm residual block's entry: residual = hidden + residual (hidden alone when residual is None),
    returns (RMSNorm(residual) * weight in weight's dtype, residual [fp32 when residual_in_fp32])."""
    check_tensors("add_rms_norm", {"hidden": hidden, "weight": weight}, {"residual": residual})
    if weight.shape != hidden.shape[-1:]:
        raise UserError(f"weight must have shape ({hidden.shape[-1]},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != hidden.shape:
        raise UserError(f"residual must have hidden's shape {tuple(hidden.shape)}, got {tuple(residual.shape)}")
    implementation = resolve_backend(backend, hidden.device, "add_rms_norm").load("add_rms_norm")
    return implementation(hidden, residual, weight, eps, residual_in_fp32)


def cross_scan(x: Tensor, backend: str = "auto") -> Tensor:
    """VMamba's 2-D cross-scan: x (batch, dim, H, W) -> (batch, 4, dim, H*W), four 1-D sequences in VMamba's order:
    row-major (l = h*W + w), column-major (l = w*H + h), then each reversed. Differentiable."""
    check_tensors("cross_scan", {"x": x})
    if x.dim() != 4:
        raise UserError(f"x must have shape (batch, dim, H, W), got {tuple(x.shape)}")
    return resolve_backend(backend, x.device, "cross_scan").load("cross_scan")(x)


def cross_merge(y: Tensor, height: int, width: int, backend: str = "auto") -> Tensor:
    """The inverse direction of `cross_scan` (its adjoint): y (batch, 4, dim, height*width) -> (batch, dim, height,
    width), each position the plain sum of its four directions' values. Differentiable."""
    check_tensors("cross_merge", {"y": y})
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != height * width:
        raise UserError(f"y must have shape (batch, 4, dim, {height}*{width}), got {tuple(y.shape)}")
    return resolve_backend(backend, y.device, "cross_merge").load("cross_merge")(y, height, width)


__all__ = [
    "ENV_VAR",
    "add_rms_norm",
    "Backend",
    "BackendUnavailableError",
    "NondeterministicError",
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_update",
    "cross_merge",
    "cross_scan",
    "forget_measurements",
    "list_backends",
    "measurements",
    "register_backend",
    "resolve_backend",
    "ScanShape",
    "scan_shape",
    "selective_scan",
    "selective_scan_parts",
    "selective_state_update",
]
