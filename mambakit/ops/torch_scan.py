"""The `torch` backend: a pure-PyTorch selective scan fast enough to train small models on a CPU.

Why it is fast: the recurrence h_t = a_t * h_{t-1} + b_t runs as one in-place fused multiply-add per step over
a contiguous (batch, dim, N) slice, while everything else (exp, products with B and C, every gradient) is a
few large vectorised ops over a chunk of time steps. The backward is the adjoint recurrence of
notes/selective-scan.md, run in reverse chunk by chunk: only the states at chunk starts are kept from the
forward and each chunk's states are recomputed, so memory stays O(batch*dim*L) plus one chunk of work
tensors. Decays are exp(delta*A) <= 1 for A < 0; nothing divides by a product of decays.

Internal layout of a chunk: time first, (T, b, g, n, k) where d = g*k channels fall in g groups of k.
The channels are innermost on purpose: every per-element factor is then either per channel (delta, u, A)
and broadcast over n, or per state (B, C) and broadcast over k, so each broadcast runs over long contiguous
rows; with n (often 16) innermost the same element-wise ops measured 10-20x slower on CPU. The sums over n
and over k become batched matrix products over contiguous (n, k) blocks.

The chunk work tensors are allocated once per call and reused by every chunk, and so are the per-step views
the recurrences loop over: fresh multi-megabyte tensors per chunk cost page faults, and building thousands
of step views per chunk costs Python time comparable to the steps themselves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import cached_states, channel_groups, state_dtype, step_dtype, store_states

#: Elements of one (T, b, d, n) work tensor; three are alive at once in the backward. 1M (4 MB in fp32) measured
#: fastest on a 2-core Xeon (2 MB L2 per core): bigger chunks fall out of cache, smaller ones pay more per-chunk
#: Python overhead.
CHUNK_ELEMENTS = 1 << 20


def default_chunk_size(batch: int, dim: int, length: int, d_state: int) -> int:
    """Time steps per chunk: as many as keep one work tensor within CHUNK_ELEMENTS."""
    return max(16, min(length, CHUNK_ELEMENTS // max(batch * dim * d_state, 1)))


class _Workspace:
    """`count` reusable (chunk, b, g, n, k) work tensors with their per-step views, made once per call."""

    def __init__(self, like: Tensor, count: int, chunk: int, batch: int, g: int, n: int, k: int) -> None:
        self.buffers = [like.new_empty(chunk, batch, g, n, k) for _ in range(count)]
        self.steps = [buffer.unbind(0) for buffer in self.buffers]


def _time_major(x: Tensor, g: int, start: int, stop: int) -> Tensor:
    """(b, d, l) -> (T, b, g, 1, k), contiguous, for the chunk [start, stop): broadcasts over n."""
    return x[..., start:stop].permute(2, 0, 1).contiguous().view(stop - start, x.shape[0], g, 1, -1)


def _time_major_BC(BC: Tensor, start: int, stop: int) -> Tensor:
    """(b, g, n, l) -> (T, b, g, 1, n), contiguous, for the chunk [start, stop): a row vector per (t, b, g)."""
    return BC[..., start:stop].permute(3, 0, 1, 2).unsqueeze(3).contiguous()


def _per_channel(x: Tensor, g: int) -> Tensor:
    """(d, n) -> (g, n, k), contiguous: A, or B/C of a time-invariant layer, in the chunk layout."""
    d, n = x.shape
    return x.view(g, d // g, n).transpose(1, 2).contiguous()


def _from_state_layout(h: Tensor) -> Tensor:
    """(b, g, n, k) -> (b, d, n)."""
    b, g, n, k = h.shape
    return h.transpose(2, 3).reshape(b, g * k, n)


def _fill_chunk(
    decay: Tensor, inputs: Tensor, delta_c: Tensor, delta_u: Tensor, A_gnk: Tensor, B: Tensor, start: int, stop: int
) -> None:
    """decay = exp(delta*A) and inputs = delta*u*B for one chunk, written into the (T, b, g, n, k) buffers."""
    torch.mul(delta_c, A_gnk, out=decay)
    decay.exp_()
    if B.dim() == 3:
        torch.mul(delta_u, B, out=inputs)
    else:
        torch.mul(delta_u, _time_major_BC(B, start, stop).transpose(-1, -2), out=inputs)


def _run_recurrence(steps_a: tuple[Tensor, ...], steps_h: tuple[Tensor, ...], length: int, h: Tensor) -> None:
    """Turn the first `length` input steps in place into the states h_t = a_t * h_{t-1} + inputs_t; h is the
    state before."""
    steps_h[0].addcmul_(steps_a[0], h)
    for t in range(1, length):
        steps_h[t].addcmul_(steps_a[t], steps_h[t - 1])


def _contract_n(BC: Tensor, x: Tensor, start: int, stop: int) -> Tensor:
    """sum_n BC_t[n] * x_t[n, k] for a chunk: x (T, b, g, n, k) -> (T, b, g, 1, k)."""
    if BC.dim() == 3:
        return (x * BC).sum(-2, keepdim=True)
    return _time_major_BC(BC, start, stop) @ x


def _chunked_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, groups: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """The core recurrence (u, delta, A, B, C, h0) -> (y without D/z, the states at every chunk start and the
    last state, (chunks + 1, b, g, n, k)), in one float dtype. B and C each come as (b, g, n, l) or,
    time-invariant, already in the chunk layout (g, n, k)."""
    batch, dim, length = u.shape
    g, n = groups, A.shape[1]
    k = dim // g
    A_gnk = _per_channel(A, g)
    starts = list(range(0, length, chunk))
    # States at every chunk start, then the last state; (b, g, n, k) like the work tensors.
    chunk_states = u.new_empty(len(starts) + 1, batch, g, n, k)
    if h0 is not None:
        chunk_states[0] = h0.reshape(batch, g, k, n).transpose(2, 3)
    else:
        chunk_states[0].zero_()
    work = _Workspace(u, 2, min(chunk, length), batch, g, n, k)
    y = torch.empty_like(u)
    for i, start in enumerate(starts):
        stop = min(start + chunk, length)
        steps = stop - start
        decay, states = work.buffers[0][:steps], work.buffers[1][:steps]
        delta_c = _time_major(delta, g, start, stop)
        _fill_chunk(decay, states, delta_c, delta_c * _time_major(u, g, start, stop), A_gnk, B, start, stop)
        _run_recurrence(work.steps[0], work.steps[1], steps, chunk_states[i])
        # Written back to (b, d, l) per chunk: a time-major y would make every element-wise op of the
        # D/z epilogue and its backward mix memory layouts, which costs more than this strided write.
        y[..., start:stop] = _contract_n(C, states, start, stop).view(steps, batch, dim).permute(1, 2, 0)
        chunk_states[i + 1] = states[-1]
    return y, chunk_states


def _chunked_backward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_states: Tensor,
    groups: int,
    chunk: int,
    grad_y: Tensor | None,
    grad_last: Tensor | None,
    want_y: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The adjoint of `_chunked_forward`: (du, ddelta, dA, dB, dC, dh0, y). It recomputes every chunk's states,
    so with `want_y` it returns the forward's y too (one more contraction a chunk), else None."""
    g = groups
    batch, dim, length = u.shape
    k, n = dim // g, A.shape[1]
    B_invariant, C_invariant = B.dim() == 3, C.dim() == 3
    if grad_y is None:
        grad_y = u.new_zeros(batch, dim, length)
    grad_y = grad_y.to(u.dtype)
    if grad_last is not None:
        carry = grad_last.to(u.dtype).reshape(batch, g, k, n).transpose(2, 3)
    else:
        carry = u.new_zeros(batch, g, n, k)
    A_gnk = _per_channel(A, g)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA = torch.zeros_like(A_gnk)
    dB = torch.zeros_like(B) if B_invariant else torch.empty_like(B)
    dC = torch.zeros_like(C) if C_invariant else torch.empty_like(C)
    work = _Workspace(u, 3, min(chunk, length), batch, g, n, k)
    steps_a, steps_h, steps_lam = work.steps
    y = torch.empty_like(u) if want_y else None
    starts = list(range(0, length, chunk))
    for i in reversed(range(len(starts))):
        start, stop = starts[i], min(starts[i] + chunk, length)
        steps = stop - start
        decay, states, lam = (buffer[:steps] for buffer in work.buffers)
        h_start = chunk_states[i]
        delta_c = _time_major(delta, g, start, stop)
        u_c = _time_major(u, g, start, stop)
        delta_u = delta_c * u_c
        _fill_chunk(decay, states, delta_c, delta_u, A_gnk, B, start, stop)
        _run_recurrence(steps_a, steps_h, steps, h_start)
        if y is not None:
            y[..., start:stop] = _contract_n(C, states, start, stop).view(steps, batch, dim).permute(1, 2, 0)
        gy = _time_major(grad_y, g, start, stop)
        # Adjoint: lam_t = C_t*gy_t + a_{t+1}*lam_{t+1}, seeded by the carry from the chunk after.
        if C_invariant:
            torch.mul(gy, C, out=lam)
        else:
            torch.mul(gy, _time_major_BC(C, start, stop).transpose(-1, -2), out=lam)
        steps_lam[steps - 1].add_(carry)
        for t in range(steps - 2, -1, -1):
            steps_lam[t].addcmul_(steps_a[t + 1], steps_lam[t + 1])
        carry = steps_a[0] * steps_lam[0]
        # dC_t = sum over the group's channels of gy_t * h_t; dB_t likewise of lam_t * delta_t * u_t; a
        # time-invariant B or C sums them over the steps and the batch instead.
        # Per step as row vector @ transposed block: 4x faster on CPU than block @ column vector.
        if C_invariant:
            dC += (states * gy).sum((0, 1))
        else:
            dC[..., start:stop] = (gy @ states.transpose(-1, -2)).view(steps, batch, g, n).permute(1, 2, 3, 0)
        if B_invariant:
            dB += (lam * delta_u).sum((0, 1))
        else:
            dB[..., start:stop] = (delta_u @ lam.transpose(-1, -2)).view(steps, batch, g, n).permute(1, 2, 3, 0)
        lam_B = _contract_n(B, lam, start, stop)
        # w_t = lam_t * a_t * h_{t-1} (= dL/da_t * a_t, the decay's share of the gradient), built in place
        # in the decay buffer, which the reverse recurrence no longer needs; lam's buffer then takes w*A.
        w = decay
        w[1:].mul_(states[:-1])
        w[0].mul_(h_start)
        w.mul_(lam)
        w_A = torch.mul(w, A_gnk, out=lam).sum(-2, keepdim=True)
        dA += w.mul_(delta_c).sum((0, 1))
        du[..., start:stop] = (delta_c * lam_B).view(steps, batch, dim).permute(1, 2, 0)
        ddelta[..., start:stop] = (u_c * lam_B + w_A).view(steps, batch, dim).permute(1, 2, 0)
    return du, ddelta, dA.transpose(1, 2).reshape(dim, n), dB, dC, _from_state_layout(carry), y


class _ChunkedScan(torch.autograd.Function):
    """`_chunked_forward` -> (y, last state), with `_chunked_backward` as its backward."""

    @staticmethod
    def forward(
        ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, groups: int, chunk: int
    ) -> tuple[Tensor, Tensor]:
        y, chunk_states = _chunked_forward(u, delta, A, B, C, h0, groups, chunk)
        ctx.save_for_backward(u, delta, A, B, C, chunk_states)
        ctx.groups, ctx.chunk, ctx.has_h0 = groups, chunk, h0 is not None
        return y, _from_state_layout(chunk_states[-1])

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None, grad_last: Tensor | None) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, chunk_states = ctx.saved_tensors
        grads = _chunked_backward(u, delta, A, B, C, chunk_states, ctx.groups, ctx.chunk, grad_y, grad_last)
        du, ddelta, dA, dB, dC, dh0, _ = grads
        return du, ddelta, dA, dB, dC, dh0 if ctx.has_h0 else None, None, None


def _as_groups(BC: Tensor, groups: int) -> Tensor:
    """To the layouts _ChunkedScan takes: (b, n, l) -> (b, 1, n, l); (b, g, n, l) passes through;
    time-invariant (d, n) -> (g, n, k), in the groups of the other (per-step) one, or g = 1."""
    if BC.dim() == 2:
        return _per_channel(BC, groups)
    return BC.unsqueeze(1) if BC.dim() == 3 else BC


class _InCompute(NamedTuple):
    """A scan's inputs in its compute dtype (fp32, or float64 for float64 inputs), B and C in `_ChunkedScan`'s
    layouts; raw_delta is delta with its bias added, before any softplus."""

    compute: torch.dtype
    groups: int
    u: Tensor
    raw_delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor


def _in_compute(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None = None,
) -> _InCompute:
    groups = channel_groups(B, C)
    compute = state_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    raw_delta = delta.to(compute)
    if delta_bias is not None:
        raw_delta = raw_delta + delta_bias.to(compute)[:, None]
    B_g, C_g = (_as_groups(BC.to(compute), groups) for BC in (B, C))
    return _InCompute(compute, groups, u.to(compute), raw_delta, A.to(compute), B_g, C_g)


def _chunk_size(u: Tensor, A: Tensor) -> int:
    batch, dim, length = u.shape
    return default_chunk_size(batch, dim, length, A.shape[1])


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
    x = _in_compute(u, delta, A, B, C, D, z, delta_bias, initial_state)
    delta_c = F.softplus(x.raw_delta) if delta_softplus else x.raw_delta
    chunk = chunk_size or _chunk_size(u, A)
    h0 = initial_state.to(x.compute) if initial_state is not None else None
    y, last = _ChunkedScan.apply(x.u, delta_c, x.A, x.B, x.C, h0, x.groups, chunk)
    if D is not None:
        y = y + D.to(x.compute)[:, None] * x.u
    if z is not None:
        y = y * F.silu(z.to(x.compute))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


def _from_groups(grad: Tensor, like: Tensor) -> Tensor:
    """The inverse of `_as_groups` for a gradient, in `like`'s shape and dtype."""
    if like.dim() == 2:
        return grad.transpose(1, 2).reshape(like.shape).to(like.dtype)
    return grad.reshape(like.shape).to(like.dtype)


def selective_scan_fwd_torch(
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
    """The scan's forward alone, for a caller that keeps its own inputs (see `mambakit.ops.scan_parts`):
    (out, the states at every chunk start, which `selective_scan_bwd_torch` needs besides the inputs)."""
    x = _in_compute(u, delta, A, B, C, D, z, delta_bias)
    delta_c = F.softplus(x.raw_delta) if delta_softplus else x.raw_delta
    y, chunk_states = _chunked_forward(x.u, delta_c, x.A, x.B, x.C, None, x.groups, _chunk_size(u, A))
    if D is not None:
        y = y.addcmul_(D.to(x.compute)[:, None], x.u)
    if z is not None:
        y = y.mul_(F.silu(z.to(x.compute)))
    return y.to(u.dtype), (chunk_states,)


def selective_scan_bwd_torch(
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
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of `selective_scan_fwd_torch`'s output, from
    the same inputs and its residuals; the D, gate, bias and softplus steps by hand, so nothing else is kept."""
    x = _in_compute(u, delta, A, B, C, D, z, delta_bias)
    compute, u_c, raw_delta = x.compute, x.u, x.raw_delta
    delta_c = F.softplus(raw_delta) if delta_softplus else raw_delta
    grad_out = dout.to(compute)
    z_c = z.to(compute) if z is not None else None
    grad_y = grad_out if z_c is None else grad_out * F.silu(z_c)
    (chunk_states,) = residuals
    du, ddelta, dA, dB, dC, _, y = _chunked_backward(
        u_c, delta_c, x.A, x.B, x.C, chunk_states, x.groups, _chunk_size(u, A), grad_y, None, want_y=z is not None
    )
    dD = None
    if D is not None:
        du.addcmul_(D.to(compute)[:, None], grad_y)
        dD = (grad_y * u_c).sum((0, 2)).to(D.dtype)
    # The derivatives of silu and softplus through aten's fused kernels, as autograd runs them: one pass each.
    dz = None
    if z_c is not None:
        assert y is not None and z is not None
        if D is not None:
            y.addcmul_(D.to(compute)[:, None], u_c)
        dz = torch.ops.aten.silu_backward(y.mul_(grad_out), z_c).to(z.dtype)
    if delta_softplus:
        ddelta = torch.ops.aten.softplus_backward(ddelta, raw_delta, 1.0, 20.0)
    ddelta_bias = ddelta.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return (
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.to(A.dtype),
        _from_groups(dB, B),
        _from_groups(dC, C),
        dD,
        dz,
        ddelta_bias,
    )


def _in(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def selective_state_update_torch(
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
    """`selective_state_update_ref`'s step in fewer ops: at the small shapes of decoding each op costs more in
    dispatch than in arithmetic, so the state is updated in place (one multiply, one fused multiply-add) and
    y = state @ C is one batched matrix product. An fp16/bf16 state (or cache rows picked by
    `state_batch_indices`) is updated in an fp32 copy and written back rounded."""
    compute = step_dtype(state)
    h = _in(cached_states(state, state_batch_indices), compute)
    dim = x.shape[1]
    x_c = _in(x, compute)
    delta = _in(dt, compute) if dt_bias is None else _in(dt, compute) + _in(dt_bias, compute)
    if dt_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    else:
        B, C = B[:, None, :], C[:, None, :]
    h.mul_(torch.exp(delta.unsqueeze(-1) * _in(A, compute)))
    h.addcmul_((delta * x_c).unsqueeze(-1), _in(B, compute))
    C_c = _in(C, compute)
    y = torch.bmm(h, C_c.transpose(1, 2)).squeeze(-1) if C_c.shape[1] == 1 else (h * C_c).sum(-1)
    if D is not None:
        y = torch.addcmul(y, _in(D, compute), x_c)
    if z is not None:
        y = y * F.silu(_in(z, compute))
    store_states(state, state_batch_indices, h, y)
    return y.to(x.dtype)


def causal_conv1d_update_torch(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """`causal_conv1d_update_ref` in fewer ops: the previous inputs meet their taps in one batched product, the
    new input in one fused multiply-add."""
    dtype = conv_state.dtype
    weight = _in(weight, dtype)
    x_c = _in(x, dtype)
    out = torch.einsum("bdk,dk->bd", conv_state, weight[:, :-1])
    out = out.addcmul_(x_c, weight[:, -1])
    if bias is not None:
        out = out.add_(_in(bias, dtype))
    if activation in ("silu", "swish"):
        out = F.silu(out)
    conv_state[..., :-1] = conv_state[..., 1:].clone()
    conv_state[..., -1] = x_c
    return out.to(x.dtype)
