"""The `triton` backend's add + RMSNorm for inference: a pre-norm block's entry in one kernel.

The decode step runs once per token and layer, so at small batch its time is the number of kernels; the
PyTorch form of residual add, casts and RMSNorm is five to ten of them. One program normalises one row.
With gradients required, the PyTorch form (`reference.add_rms_norm_ref`) runs instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import add_rms_norm_ref


@triton.jit
def _add_rms_norm_kernel(
    hidden_ptr,
    residual_ptr,
    weight_ptr,
    normed_ptr,
    residual_out_ptr,
    width,
    eps,
    stride_hidden,
    stride_residual,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """Rounds as the PyTorch form does: the sum to the residual's dtype, that to the weight's dtype before the
    statistics (fp32), the normalised row to the weight's dtype before the weight multiplies it."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(hidden_ptr + row * stride_hidden + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
    residual = x.to(residual_out_ptr.dtype.element_ty)
    tl.store(residual_out_ptr + row * width + cols, residual, mask=mask)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    x = residual.to(weight.dtype).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
    normed = (x * rstd).to(weight.dtype).to(tl.float32) * weight.to(tl.float32)
    tl.store(normed_ptr + row * width + cols, normed.to(normed_ptr.dtype.element_ty), mask=mask)


def add_rms_norm_triton(
    hidden: Tensor, residual: Tensor | None, weight: Tensor, eps: float, residual_in_fp32: bool
) -> tuple[Tensor, Tensor]:
    """Same contract as `reference.add_rms_norm_ref`; one kernel when no gradient is needed."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, residual, weight))
    if (
        needs_grad
        or hidden.dtype == torch.float64
        or hidden.stride(-1) != 1
        or (residual is not None and residual.stride(-1) != 1)
    ):
        return add_rms_norm_ref(hidden, residual, weight, eps, residual_in_fp32)
    width = hidden.shape[-1]
    rows = hidden.numel() // width
    residual_dtype = torch.promote_types(hidden.dtype, residual.dtype) if residual is not None else hidden.dtype
    if residual_in_fp32:
        residual_dtype = torch.float32
    residual_out = torch.empty(hidden.shape, device=hidden.device, dtype=residual_dtype)
    normed = torch.empty(hidden.shape, device=hidden.device, dtype=weight.dtype)
    hidden2d = hidden.reshape(rows, width)
    residual2d = residual.reshape(rows, width) if residual is not None else hidden2d
    block = triton.next_power_of_2(width)
    _add_rms_norm_kernel[(rows,)](
        hidden2d,
        residual2d,
        weight,
        normed,
        residual_out,
        width,
        eps,
        hidden2d.stride(0),
        residual2d.stride(0),
        BLOCK=block,
        HAS_RESIDUAL=residual is not None,
        num_warps=min(16, max(1, block // 256)),
    )
    return normed, residual_out
