"""Reference implementations: plain sequential loops, any float dtype (float64 included).

They are the oracle every backend is tested against, and the `reference` backend. Shape letters:
b batch, d channels (dim), n state size (N), l sequence length, g groups of channels sharing B/C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def state_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32 state math, or fp64 when any input is fp64 (the oracle's precision)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def per_channel(BC: Tensor, dim: int) -> Tensor:
    """Expand B or C to one copy per channel: (b, n, l) or (b, g, n, l) -> (b, d, n, l); (d, n) is kept."""
    if BC.dim() == 2:
        return BC
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def channel_groups(B: Tensor, C: Tensor) -> int:
    """The channel groups of whichever of B and C varies per step in groups (both do in the same ones), else 1."""
    return next((BC.shape[1] for BC in (B, C) if BC.dim() == 4), 1)


def selective_scan_ref(
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
    """Selective scan, one time step at a time.

    u, delta, z: (b, d, l); A: (d, n); B, C: each (b, n, l), (b, g, n, l) or (d, n); D, delta_bias: (d,);
    initial_state: (b, d, n). Returns out (b, d, l) in u's dtype, and the last state (b, d, n) when asked.
    """
    dtype_in = u.dtype
    compute = state_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dim = u.shape[1]
    u_f, delta_f, A_f = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_f = F.softplus(delta_f)
    # B and C each keep their own layout: either may be time-invariant while the other varies per step.
    B_f, C_f = per_channel(B.to(compute), dim), per_channel(C.to(compute), dim)
    batch, _, length = u.shape
    h = initial_state.to(compute) if initial_state is not None else u_f.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta_f[:, :, t, None]
        Bt = B_f if B.dim() == 2 else B_f[..., t]
        Ct = C_f if C.dim() == 2 else C_f[..., t]
        h = torch.exp(dt * A_f) * h + dt * Bt * u_f[:, :, t, None]
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u_f.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(compute)[:, None] * u_f
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def step_dtype(state: Tensor) -> torch.dtype:
    """The math of a decode step: fp32 for an fp32, fp16 or bf16 state (which stores the result rounded), fp64 for
    a float64 one."""
    return torch.float64 if state.dtype == torch.float64 else torch.float32


def cached_states(state: Tensor, state_batch_indices: Tensor | None) -> Tensor:
    """The states a decode step updates: `state` itself, or with `state_batch_indices` a copy of those rows of the
    cache `state` (row 0 standing in for padding, marked by a negative index)."""
    return state if state_batch_indices is None else state[state_batch_indices.clamp(min=0)]


def store_states(state: Tensor, state_batch_indices: Tensor | None, new_state: Tensor, y: Tensor) -> None:
    """Write a step's new states into `state` in its dtype: all of it, or the rows `state_batch_indices` names; a
    padding row (negative index) writes nothing and its output y is zeroed, as in mamba-ssm."""
    if state_batch_indices is None:
        if new_state is not state:  # the torch backend updates an fp32 state in place
            state.copy_(new_state)
        return
    valid = state_batch_indices >= 0
    state[state_batch_indices[valid]] = new_state[valid].to(state.dtype)
    y.masked_fill_(~valid[:, None], 0)


def selective_state_update_ref(
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
    """One recurrent step. state: (b, d, n) in fp32, fp16, bf16 or fp64, updated in place in its own dtype (the math
    is fp32, fp64 for a fp64 state); x, dt, z: (b, d); B, C: (b, n) or (b, g, n). With `state_batch_indices` (b,)
    the step's states are those rows of a larger cache `state` (negative: a padding row, skipped, output 0).

    Returns y: (b, d) in x's dtype, from the new state before it is rounded to the state's dtype.
    """
    compute = step_dtype(state)
    dim = x.shape[1]
    dt_f = dt.to(compute)
    if dt_bias is not None:
        dt_f = dt_f + dt_bias.to(compute)
    if dt_softplus:
        dt_f = F.softplus(dt_f)
    if B.dim() == 2:
        B_f, C_f = B.to(compute)[:, None, :], C.to(compute)[:, None, :]
    else:
        B_f = B.to(compute).repeat_interleave(dim // B.shape[1], dim=1)
        C_f = C.to(compute).repeat_interleave(dim // C.shape[1], dim=1)
    x_f = x.to(compute)
    h = cached_states(state, state_batch_indices).to(compute)
    new_state = torch.exp(dt_f[..., None] * A.to(compute)) * h + dt_f[..., None] * B_f * x_f[..., None]
    y = (new_state * C_f).sum(-1)
    if D is not None:
        y = y + D.to(compute) * x_f
    if z is not None:
        y = y * F.silu(z.to(compute))
    store_states(state, state_batch_indices, new_state, y)
    return y.to(x.dtype)


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Depthwise causal convolution. x: (b, d, l); weight: (d, w); bias: (d,);
    initial_states: (b, d, w-1), the inputs that precede x. Returns (b, d, l) [and the final (b, d, w-1)].
    """
    width = weight.shape[1]
    if initial_states is None:
        initial_states = x.new_zeros(x.shape[0], x.shape[1], width - 1)
    padded = torch.cat([initial_states.to(x.dtype), x], dim=-1)
    out = F.conv1d(
        padded, weight.unsqueeze(1).to(x.dtype), bias.to(x.dtype) if bias is not None else None, groups=x.shape[1]
    )
    if activation in ("silu", "swish"):
        out = F.silu(out)
    final = padded[..., padded.shape[-1] - (width - 1) :]
    return (out, final) if return_final_states else out


def causal_conv1d_update_ref(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """One step of the causal convolution. x: (b, d); conv_state: (b, d, w-1), the previous inputs,
    shifted in place to take x. Returns (b, d)."""
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    out = (window * weight.to(window.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    conv_state.copy_(window[..., 1:])
    return out.to(x.dtype)


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / rms(x) * weight over the last axis, statistics in fp32 (as HF Mamba's RMSNorm: the normalised x is
    rounded to x's dtype before the weight multiplies it)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # one fused kernel on CUDA, same math
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def add_rms_norm_ref(
    hidden: Tensor, residual: Tensor | None, weight: Tensor, eps: float, residual_in_fp32: bool
) -> tuple[Tensor, Tensor]:
    """A pre-norm block's entry: residual = hidden + residual (hidden alone for the first block), then
    (rms_norm(residual in weight's dtype), residual [in fp32 when residual_in_fp32])."""
    residual = hidden if residual is None else residual + hidden
    normed = rms_norm_ref(residual.to(weight.dtype), weight, eps)
    return normed, residual.float() if residual_in_fp32 else residual


def cross_scan_ref(x: Tensor) -> Tensor:
    """VMamba's cross-scan: x (batch, dim, H, W) -> (batch, 4, dim, H*W), the four directions in VMamba's order:
    row-major (l = h*W + w), column-major (l = w*H + h), and each of them reversed."""
    rows = x.flatten(2)
    columns = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, columns, rows.flip(-1), columns.flip(-1)], dim=1)


def cross_merge_ref(y: Tensor, height: int, width: int) -> Tensor:
    """The adjoint of `cross_scan_ref`: y (batch, 4, dim, H*W) -> (batch, dim, H, W), each position the plain sum of
    its four directions' values (no weights, no mean)."""
    batch, _, dim, _ = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    columns = y[:, 1] + y[:, 3].flip(-1)
    return rows.reshape(batch, dim, height, width) + columns.reshape(batch, dim, width, height).transpose(2, 3)
