"""The `triton` backend's decode step: one recurrent step of the selective scan, the state updated in place.

One program owns BLOCK_D channels x all N states of one batch element: it reads the state once, writes it once,
and reads x, dt, z and each channel's B/C row (its group's); fp32 math whatever the input dtype. The state may be
fp32, fp16 or bf16 (a halved cache, as inference servers keep it): it is widened on load and rounded on store, as
in mamba-ssm's kernel, and y comes from the unrounded fp32 state. With state indices the batch element's state is
a row of a larger cache, and a negative index marks a padding row: skipped, its output 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_scan import _FAST_LOG, LOG2E, _last_axis_contiguous, _sigmoid, _softplus

#: Below this many 32-channel programs (two per SM of an H100) the step uses 8-channel programs instead.
_SMALL_STEP_PROGRAMS = 264


@triton.jit
def _state_update_kernel(
    state_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    indices_ptr,
    out_ptr,
    dim,
    group_dim,
    stride_s_b,
    stride_s_d,
    stride_x_b,
    stride_dt_b,
    stride_z_b,
    stride_A_d,
    stride_B_b,
    stride_B_g,
    stride_C_b,
    stride_C_g,
    N: tl.constexpr,
    NP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_INDICES: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    chans = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < dim
    cols = tl.arange(0, NP)
    mask = chan_mask[:, None] & (cols[None, :] < N)
    groups = chans // group_dim
    row = batch
    if HAS_INDICES:
        row = tl.load(indices_ptr + batch).to(tl.int64)
        if row < 0:
            padding = tl.zeros((BLOCK_D,), dtype=out_ptr.dtype.element_ty)
            tl.store(out_ptr + batch * dim + chans, padding, mask=chan_mask)
            return
    state_ptrs = state_ptr + row * stride_s_b + chans[:, None] * stride_s_d + cols[None, :]
    h = tl.load(state_ptrs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + batch * stride_x_b + chans, mask=chan_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + batch * stride_dt_b + chans, mask=chan_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt, FAST_LOG)
    a = tl.load(A_ptr + chans[:, None] * stride_A_d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + batch * stride_B_b + groups[:, None] * stride_B_g + cols[None, :], mask=mask, other=0.0)
    C = tl.load(C_ptr + batch * stride_C_b + groups[:, None] * stride_C_g + cols[None, :], mask=mask, other=0.0)
    h = tl.exp2(dt[:, None] * a * LOG2E) * h + (dt * x)[:, None] * B.to(tl.float32)
    tl.store(state_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(h * C.to(tl.float32), axis=1)
    if HAS_D:
        y += tl.load(D_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + batch * stride_z_b + chans, mask=chan_mask, other=0.0).to(tl.float32)
        y *= z * _sigmoid(z)
    tl.store(out_ptr + batch * dim + chans, y.to(out_ptr.dtype.element_ty), mask=chan_mask)


def selective_state_update_triton(
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
    """One step of the selective scan on the GPU; same contract as `mambakit.ops.selective_state_update`
    (arguments already checked): `state` (batch, dim, N) in fp32, fp16 or bf16 updated in place (or its rows
    `state_batch_indices`), returns y (batch, dim) in x's dtype. A float64 state goes to the reference
    implementation, which keeps float64."""
    if state.dtype == torch.float64:
        from .reference import selective_state_update_ref

        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    _, dim, d_state = state.shape
    batch = x.shape[0]
    if B.dim() == 2:  # (batch, N): one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups = B.shape[1]
    # The kernel reads states with unit stride; a state with other strides is updated through a copy.
    work = _last_axis_contiguous(state)
    # Channels must be unit-stride; batch strides may be anything (x and z are halves of one projection).
    x, dt, A, B, C = (_last_axis_contiguous(t) for t in (x, dt, A, B, C))
    z = _last_axis_contiguous(z) if z is not None else None
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    # The step is latency-bound: at small batch, smaller programs (one warp, 8 channels) spread it over more SMs.
    small = batch * dim < 32 * _SMALL_STEP_PROGRAMS
    block_d = min(8 if small else 32, triton.next_power_of_2(dim))
    _state_update_kernel[(triton.cdiv(dim, block_d), batch)](
        work,
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else x,
        z if z is not None else x,
        dt_bias if dt_bias is not None else x,
        state_batch_indices if state_batch_indices is not None else x,
        out,
        dim,
        dim // groups,
        work.stride(0),
        work.stride(1),
        x.stride(0),
        dt.stride(0),
        z.stride(0) if z is not None else 0,
        A.stride(0),
        B.stride(0),
        B.stride(1),
        C.stride(0),
        C.stride(1),
        N=d_state,
        NP=triton.next_power_of_2(d_state),
        BLOCK_D=block_d,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=dt_softplus,
        HAS_INDICES=state_batch_indices is not None,
        FAST_LOG=_FAST_LOG,
        num_warps=1 if small else 4,
    )
    if work is not state:
        state.copy_(work)
    return out
