"""The `torch` backend: a pure-PyTorch selective scan fast enough to train small models on a CPU.

Why it is fast: the recurrence h_t = a_t * h_{t-1} + b_t runs as one in-place fused multiply-add per step over
a contiguous (batch, dim, N) slice, while everything else (exp, products with B and C, every gradient) is a
few large vectorised ops over a chunk of time steps. The backward is the adjoint recurrence of
notes/selective-scan.md, run in reverse chunk by chunk: only the states at chunk starts are kept from the
forward and each chunk's states are recomputed, so memory stays O(batch*dim*L) plus one chunk of work
tensors. Decays are exp(delta*A) <= 1 for A < 0; nothing divides by a product of decays.

Internal layout of a chunk: time first, (T, b, g, k, n) where d = g*k channels fall in g groups of k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import state_dtype

#: Elements of one (T, b, d, n) work tensor; about six are alive at once in the backward.
CHUNK_ELEMENTS = 1 << 22


def default_chunk_size(batch: int, dim: int, length: int, d_state: int) -> int:
    """Time steps per chunk: as many as keep one work tensor within CHUNK_ELEMENTS."""
    return max(16, min(length, CHUNK_ELEMENTS // max(batch * dim * d_state, 1)))


def _to_time_major_BC(BC: Tensor, start: int, stop: int) -> Tensor:
    """(b, g, n, l) -> (T, b, g, 1, n), contiguous, for the chunk [start, stop)."""
    # Contiguous time-major operands make every elementwise result time-major too, so that each step of the
    # recurrence touches one contiguous slice.
    return BC[..., start:stop].permute(3, 0, 1, 2).unsqueeze(3).contiguous()


def _time_major(x: Tensor, g: int, start: int, stop: int) -> Tensor:
    """(b, d, l) -> (T, b, g, k) contiguous for the chunk [start, stop)."""
    return x[..., start:stop].permute(2, 0, 1).contiguous().view(stop - start, x.shape[0], g, -1)


def _chunk_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, g: int, start: int, stop: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decays a = exp(delta*A) and inputs b = delta*u*B for one chunk, both (T, b, g, k, n) contiguous;
    also delta and delta*u as (T, b, g, k)."""
    k, n = A.shape[0] // g, A.shape[1]
    delta_c = _time_major(delta, g, start, stop)
    decay = torch.exp(delta_c.unsqueeze(-1) * A.view(1, 1, g, k, n))
    delta_u = delta_c * _time_major(u, g, start, stop)
    if B.dim() == 2:
        inputs = delta_u.unsqueeze(-1) * B.view(1, 1, g, k, n)
    else:
        inputs = delta_u.unsqueeze(-1) * _to_time_major_BC(B, start, stop)
    return decay, inputs, delta_c, delta_u


def _run_recurrence(decay: Tensor, inputs: Tensor, h: Tensor) -> Tensor:
    """Turn `inputs` in place into the states h_t = decay_t * h_{t-1} + inputs_t; h is the state before."""
    steps_a = decay.unbind(0)
    steps_h = inputs.unbind(0)
    steps_h[0].addcmul_(steps_a[0], h)
    for t in range(1, len(steps_h)):
        steps_h[t].addcmul_(steps_a[t], steps_h[t - 1])
    return inputs


def _contract_C(states: Tensor, C: Tensor, start: int, stop: int) -> Tensor:
    """y_t = sum_n C_t * h_t for a chunk: states (T, b, g, k, n) -> (T, b, g, k)."""
    if C.dim() == 2:
        g, k = states.shape[2], states.shape[3]
        return (states * C.view(1, 1, g, k, -1)).sum(-1)
    return (states @ _to_time_major_BC(C, start, stop).transpose(-1, -2)).squeeze(-1)


class _ChunkedScan(torch.autograd.Function):
    """Core recurrence only: (u, delta, A, B, C, h0) -> (y without D/z, last state), in one float dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, groups, chunk):  # noqa: ANN001 - autograd signature
        batch, dim, length = u.shape
        g = max(groups, 1)
        n = A.shape[1]
        h = h0.reshape(batch, g, dim // g, n).clone() if h0 is not None else u.new_zeros(batch, g, dim // g, n)
        y = u.new_empty(length, batch, g, dim // g)
        starts = list(range(0, length, chunk))
        chunk_states = u.new_empty(len(starts), batch, g, dim // g, n)
        for i, start in enumerate(starts):
            stop = min(start + chunk, length)
            chunk_states[i] = h
            decay, inputs, _, _ = _chunk_inputs(u, delta, A, B, g, start, stop)
            states = _run_recurrence(decay, inputs, h)
            y[start:stop] = _contract_C(states, C, start, stop)
            h = states[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, chunk_states)
        ctx.groups, ctx.chunk, ctx.has_h0 = g, chunk, h0 is not None
        return y.reshape(length, batch, dim).permute(1, 2, 0), h.reshape(batch, dim, n)

    @staticmethod
    def backward(ctx, grad_y, grad_last):  # noqa: ANN001 - autograd signature
        u, delta, A, B, C, chunk_states = ctx.saved_tensors
        g, chunk = ctx.groups, ctx.chunk
        batch, dim, length = u.shape
        k, n = dim // g, A.shape[1]
        time_invariant = B.dim() == 2
        if grad_y is None:
            grad_y = u.new_zeros(batch, dim, length)
        grad_y = grad_y.to(u.dtype)
        carry = (
            grad_last.to(u.dtype).reshape(batch, g, k, n).clone()
            if grad_last is not None
            else u.new_zeros(batch, g, k, n)
        )
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B) if time_invariant else torch.empty_like(B)
        dC = torch.zeros_like(C) if time_invariant else torch.empty_like(C)
        A_view = A.view(1, 1, g, k, n)
        starts = list(range(0, length, chunk))
        for i in reversed(range(len(starts))):
            start, stop = starts[i], min(starts[i] + chunk, length)
            h_start = chunk_states[i]
            decay, states, delta_c, delta_u = _chunk_inputs(u, delta, A, B, g, start, stop)
            states = _run_recurrence(decay, states, h_start)
            gy = _time_major(grad_y, g, start, stop)
            # Adjoint: lam_t = C_t*gy_t + a_{t+1}*lam_{t+1}, seeded by the carry from the chunk after.
            if time_invariant:
                lam = gy.unsqueeze(-1) * C.view(1, 1, g, k, n)
            else:
                lam = gy.unsqueeze(-1) * _to_time_major_BC(C, start, stop)
            steps_lam, steps_a = lam.unbind(0), decay.unbind(0)
            steps_lam[-1].add_(carry)
            for t in range(len(steps_lam) - 2, -1, -1):
                steps_lam[t].addcmul_(steps_a[t + 1], steps_lam[t + 1])
            carry = steps_a[0] * steps_lam[0]
            # dC_t = sum over the group's channels of gy_t * h_t
            if time_invariant:
                dC += (states * gy.unsqueeze(-1)).sum((0, 1)).view(dim, n)
            else:
                dC[..., start:stop] = (gy.unsqueeze(3) @ states).squeeze(3).permute(1, 2, 3, 0)
            # w_t = lam_t * a_t * h_{t-1} (= dL/da_t * a_t, the decay's share of the gradient), built in place
            # in the decay buffer, which the reverse recurrence no longer needs.
            w = decay
            w[1:].mul_(states[:-1])
            w[0].mul_(h_start)
            w.mul_(lam)
            del states, decay
            u_c = _time_major(u, g, start, stop)
            w_A = (w * A_view).sum(-1)
            dA += w.mul_(delta_c.unsqueeze(-1)).sum((0, 1)).view(dim, n)
            del w
            if time_invariant:
                lam_B = (lam * B.view(1, 1, g, k, n)).sum(-1)
                dB += (lam * delta_u.unsqueeze(-1)).sum((0, 1)).view(dim, n)
            else:
                B_c = _to_time_major_BC(B, start, stop)
                lam_B = (lam @ B_c.transpose(-1, -2)).squeeze(-1)
                dB[..., start:stop] = (delta_u.unsqueeze(3) @ lam).squeeze(3).permute(1, 2, 3, 0)
            du[..., start:stop] = (delta_c * lam_B).reshape(-1, batch, dim).permute(1, 2, 0)
            ddelta[..., start:stop] = (u_c * lam_B + w_A).reshape(-1, batch, dim).permute(1, 2, 0)
            del lam
        dh0 = carry.reshape(batch, dim, n) if ctx.has_h0 else None
        return du, ddelta, dA, dB, dC, dh0, None, None


def _as_groups(BC: Tensor) -> Tensor:
    """(b, n, l) -> (b, 1, n, l); grouped and time-invariant layouts pass through."""
    return BC.unsqueeze(1) if BC.dim() == 3 else BC


def selective_scan_torch(
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
    *,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan; same contract as `mambakit.ops.selective_scan`. `chunk_size` (time steps per
    chunk) only trades memory for speed; by default a work tensor holds about CHUNK_ELEMENTS values."""
    groups = 0 if B.dim() == 2 else (1 if B.dim() == 3 else B.shape[1])
    dtype_in = u.dtype
    compute = state_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_c, delta_c = u.to(compute), delta.to(compute)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    chunk = chunk_size or default_chunk_size(*u.shape, A.shape[1])
    h0 = initial_state.to(compute) if initial_state is not None else None
    y, last = _ChunkedScan.apply(
        u_c, delta_c, A.to(compute), _as_groups(B.to(compute)), _as_groups(C.to(compute)), h0, groups, chunk
    )
    if D is not None:
        y = y + D.to(compute)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, last) if return_last_state else out


