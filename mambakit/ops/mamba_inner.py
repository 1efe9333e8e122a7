"""The Mamba mixer's inner path as one autograd function (mamba-ssm's mamba_inner_fn, checkpoint level 1):

    xz = [x, z] -> causal conv + silu -> x_proj -> [dt, B, C];  dt -> dt_proj = delta
    y = selective_scan(conv(x), delta, A = -exp(A_log), B, C, D, z, dt bias, softplus)

It keeps xz, x_dbl = x_proj(conv(x)) and the scan's own residuals (its chunk states) for the backward, and
recomputes the conv's output and delta there: two (batch, d_inner, L) activations a layer fewer than autograd
through the separate ops keeps, for one more conv and one dt_proj product in the backward. in_proj and out_proj
stay outside: their saved tensors (the layer's input, y) are the ones mamba-ssm keeps too.

Activations are (channels, batch * L) matrices seen as (batch, channels, L) sequences, as in `mambakit.nn.mixer`.
The projections run in xz's dtype (the autocast dtype under mixed precision, cast explicitly, so the backward,
which runs outside autocast, computes the same products); the scan's state math is fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from . import causal_conv1d

ScanForward = Callable[..., tuple[Tensor, tuple[Tensor, ...]]]
ScanBackward = Callable[..., tuple[Tensor | None, ...]]


def as_sequences(columns: Tensor, batch: int, length: int) -> Tensor:
    """A (channels, batch * length) matrix as (batch, channels, length), without copying."""
    return columns.view(-1, batch, length).transpose(0, 1)


def as_columns(sequences: Tensor) -> Tensor:
    """(batch, channels, length) as a (channels, batch * length) matrix: a view when it is laid out as one
    (the layout `as_sequences` makes and the kernels keep), else a copy."""
    return sequences.transpose(0, 1).reshape(sequences.shape[1], -1)


def mamba_inner(
    xz: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    dt_proj_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    batch: int,
    scan_parts: tuple[ScanForward, ScanBackward],
    conv_backend: str = "auto",
) -> Tensor:
    """y = the gated scan output (batch, d_inner, L) from xz (2 * d_inner, batch * L), with the gradients of every
    tensor argument. conv_weight (d_inner, width); x_proj_weight (dt_rank + 2N, d_inner); dt_proj_weight
    (d_inner, dt_rank); A_log (d_inner, N). `scan_parts` is a backend's scan forward and backward
    (`mambakit.ops.selective_scan_parts`)."""
    output = _MambaInner.apply(
        xz,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        dt_proj_bias,
        A_log,
        D,
        batch,
        scan_parts,
        conv_backend,
    )
    return cast(Tensor, output)


def _scan_inputs(
    xz: Tensor, x_dbl: Tensor, dt_proj_weight: Tensor, batch: int, d_state: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x, z, delta (before its bias), B, C as (batch, channels, L) sequences, and dt (dt_rank, batch * L)."""
    d_inner = dt_proj_weight.shape[0]
    length = xz.shape[1] // batch
    x, z = (as_sequences(half, batch, length) for half in xz.split(d_inner))
    dt, B, C = x_dbl.split([x_dbl.shape[0] - 2 * d_state, d_state, d_state])
    delta = as_sequences(dt_proj_weight.to(xz.dtype) @ dt, batch, length)
    return x, z, delta, as_sequences(B, batch, length), as_sequences(C, batch, length), dt


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        xz: Tensor,
        conv_weight: Tensor,
        conv_bias: Tensor | None,
        x_proj_weight: Tensor,
        dt_proj_weight: Tensor,
        dt_proj_bias: Tensor,
        A_log: Tensor,
        D: Tensor,
        batch: int,
        scan_parts: tuple[ScanForward, ScanBackward],
        conv_backend: str,
    ) -> Tensor:
        d_inner, d_state = dt_proj_weight.shape[0], A_log.shape[1]
        length = xz.shape[1] // batch
        x = as_sequences(xz[:d_inner], batch, length)
        conv_out = cast(Tensor, causal_conv1d(x, conv_weight, conv_bias, "silu", backend=conv_backend))
        x_dbl = x_proj_weight.to(xz.dtype) @ as_columns(conv_out)
        _, z, delta, B, C, _ = _scan_inputs(xz, x_dbl, dt_proj_weight, batch, d_state)
        scan_forward, _ = scan_parts
        A = -torch.exp(A_log.float())
        y, residuals = scan_forward(conv_out, delta, A, B, C, D.float(), z, dt_proj_bias.float(), True)
        weights = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
        # Through save_for_backward, so an enclosing activation checkpoint frees them as well.
        ctx.save_for_backward(xz, *weights, x_dbl, *residuals)
        ctx.batch, ctx.scan_parts, ctx.conv_backend = batch, scan_parts, conv_backend
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, x_dbl, *residuals = (
            ctx.saved_tensors
        )
        batch = ctx.batch
        dtype, d_state = xz.dtype, A_log.shape[1]
        x, z, delta, B, C, dt = _scan_inputs(xz, x_dbl, dt_proj_weight, batch, d_state)
        with torch.enable_grad():
            x_leaf, weight_leaf = x.detach().requires_grad_(), conv_weight.detach().requires_grad_()
            bias_leaf = None if conv_bias is None else conv_bias.detach().requires_grad_()
            conv_out = cast(Tensor, causal_conv1d(x_leaf, weight_leaf, bias_leaf, "silu", backend=ctx.conv_backend))
        conv_leaves = [t for t in (x_leaf, weight_leaf, bias_leaf) if t is not None]
        _, scan_backward = ctx.scan_parts
        A = -torch.exp(A_log.float())
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = scan_backward(
            conv_out.detach(), delta, A, B, C, D.float(), z, dt_proj_bias.float(), True, tuple(residuals), dy
        )
        assert du is not None and ddelta is not None and dA is not None and dB is not None and dC is not None
        ddelta_columns = as_columns(ddelta.to(dtype))
        dx_dbl = torch.cat([dt_proj_weight.to(dtype).t() @ ddelta_columns, as_columns(dB), as_columns(dC)])
        conv_columns = as_columns(conv_out.detach())
        dconv_out = du + as_sequences(x_proj_weight.to(dtype).t() @ dx_dbl, batch, du.shape[-1])
        conv_grads = torch.autograd.grad(conv_out, conv_leaves, dconv_out)
        dx, dconv_weight = conv_grads[0], conv_grads[1]
        dxz = torch.cat([as_columns(dx), as_columns(cast(Tensor, dz))])
        return (
            dxz,
            dconv_weight,
            conv_grads[2] if conv_bias is not None else None,
            (dx_dbl @ conv_columns.t()).to(x_proj_weight.dtype),
            (ddelta_columns @ dt.t()).to(dt_proj_weight.dtype),
            None if ddelta_bias is None else ddelta_bias.to(dt_proj_bias.dtype),
            (dA * A).to(A_log.dtype),
            None if dD is None else dD.to(D.dtype),
            None,
            None,
            None,
        )
