"""The `triton` backend's 2-D cross-scan and cross-merge (VMamba's SS2D): one pass over memory each.

cross_scan: x (batch, dim, H, W) -> out (batch, 4, dim, L = H*W), contiguous, with
    out[b, 0, d, h*W + w]         = x[b, d, h, w]   (row-major)
    out[b, 1, d, w*H + h]         = x[b, d, h, w]   (column-major)
    out[b, 2, d, L - 1 - h*W - w] = x[b, d, h, w]   (row-major, reversed)
    out[b, 3, d, L - 1 - w*H - h] = x[b, d, h, w]   (column-major, reversed)
cross_merge: y (batch, 4, dim, L) -> (batch, dim, H, W), contiguous, each position the sum of the four values the
    scan put it at, (y0 + y2) + (y1 + y3) in that order (the reference's, so fp32 results are bit-equal), in fp32
    for 16-bit inputs (fp64 for fp64), rounded once to y's dtype.
Each is the other's adjoint, so each backward is the other op (and double backward works).

A program owns a (BLOCK_D channels, BLOCK_H rows, BLOCK_W columns) tile of one batch element: the scan reads it
once and writes it to the four directions, the merge reads the tile's four images and writes it once, so each
element of the (batch, dim, H, W) side is read or written once and each of the (batch, 4, dim, L) side once: the
torch version's transpose copy, two flips and stack (7 reads and 7 writes per element) become 1 read and 4 writes.
Every address comes from the strides, so x (and the merge's output) may have any layout; the tile shape follows
the layout so that the (batch, dim, H, W) side is read or written along its unit-stride axis:
- W contiguous (plain NCHW): up to 64 columns x enough rows for 512 elements, a single channel for large planes,
  several for small ones (56 x 56: 1 x 8 x 64 on 4 warps; 7 x 7: 8 channels x 8 x 8 on 2 warps);
- channels contiguous (channels_last NHWC, as conv2d and layer norms over channels leave it): 16 channels x 8 x 8,
  the loads coalescing along the channels. No copy to NCHW is made.
Triton converts the tile's register layout (through shared memory) for the column-major stores, which run along
H. The reversed directions are stored with decreasing addresses; the warp's stores still cover whole sectors.
For channels-last x the scan's backward (a merge) writes dx channels-last too, as autograd's gradient contract
for a leaf wants. A batch element's x must have fewer than 2**31 elements (in-plane offsets are int32).

Measured on an H200 (bench/gpu_cross_scan.py --sweep, bf16, these default tiles, the torch backend in the same run):
B128 D192 56x56 contiguous, scan 0.53 ms (1.45 TB/s, 1.6x torch), merge 0.25 ms (3.1 TB/s, 4.2x); B128 D768 7x7,
scan 0.060 ms (as torch), merge 0.026 ms (3.2x); channels-last 56x56, scan 2.0 ms (1.1x torch; probably its 16-byte runs
along W and H write half sectors). The scan's time grew with the tile (2048 elements: 2.6x that of 512), so its
stores, not its loads, limit it; the merge's loads follow the same patterns at full speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_scan import require_powers_of_two


@dataclass(frozen=True)
class CrossScanConfig:
    """Tile of one program, `block_d` channels x `block_h` rows x `block_w` columns, on `warps` warps (powers of
    two)."""

    block_d: int
    block_h: int
    block_w: int
    warps: int = 4

    def __post_init__(self) -> None:
        require_powers_of_two(self)


#: Elements per tile for the W-contiguous layout (bigger tiles measured slower for the scan on an H200: 2048 a tile
#: took 2.6x the time of 512 at B128 D192 56x56 bf16; bench/gpu_cross_scan.py --sweep).
_TILE_ELEMENTS = 512


def _channel_last(x: Tensor) -> bool:
    """Whether x (batch, dim, H, W)'s channels are its unit-stride axis (channels_last memory format)."""
    return x.shape[1] > 1 and x.stride(1) == 1 and x.shape[2] * x.shape[3] > 1


def default_config(dim: int, height: int, width: int, channel_last: bool) -> CrossScanConfig:
    """The tile for a (dim, H, W) plane stack whose unit-stride axis is the channels (`channel_last`) or W."""
    if channel_last:
        return CrossScanConfig(
            block_d=min(16, triton.next_power_of_2(dim)),
            block_h=min(8, triton.next_power_of_2(height)),
            block_w=min(8, triton.next_power_of_2(width)),
        )
    block_w = min(64, triton.next_power_of_2(width))
    block_h = min(triton.next_power_of_2(height), max(1, _TILE_ELEMENTS // block_w))
    block_d = min(triton.next_power_of_2(dim), max(1, _TILE_ELEMENTS // (block_h * block_w)))
    # Small planes (several channels a tile, rows shorter than a warp) measured faster on 2 warps.
    return CrossScanConfig(block_d=block_d, block_h=block_h, block_w=block_w, warps=4 if block_w >= 32 else 2)


@triton.jit
def _tile(dim, height, width, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's batch element (int64), channels (int64, (BLOCK_D, 1, 1)), rows (1, BLOCK_H, 1), columns
    (1, 1, BLOCK_W) and the mask of the tile's positions inside the tensor. Grid: (tiles of the plane, channel
    blocks, batch)."""
    tiles_w = tl.cdiv(width, BLOCK_W)
    tile = tl.program_id(0)
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (chans < dim)[:, None, None] & (rows < height)[None, :, None] & (cols < width)[None, None, :]
    return (
        tl.program_id(2).to(tl.int64),
        chans.to(tl.int64)[:, None, None],
        rows[None, :, None],
        cols[None, None, :],
        mask,
    )


@triton.jit
def _cross_scan_kernel(
    x_ptr,
    out_ptr,
    dim,
    height,
    width,
    stride_x_b,
    stride_x_d,
    stride_x_h,
    stride_x_w,
    stride_o_b,
    stride_o_k,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """x any strides; out a contiguous (batch, 4, dim, H*W) (its batch and direction strides given)."""
    batch, chans, rows, cols, mask = _tile(dim, height, width, BLOCK_D, BLOCK_H, BLOCK_W)
    x = tl.load(x_ptr + batch * stride_x_b + chans * stride_x_d + rows * stride_x_h + cols * stride_x_w, mask=mask)
    length = height * width
    row_major = rows * width + cols
    col_major = cols * height + rows
    # Each direction's plane from the one before (pointer sums: no int32 product of the direction stride).
    plane0 = out_ptr + batch * stride_o_b + chans * length
    plane1 = plane0 + stride_o_k
    plane2 = plane1 + stride_o_k
    plane3 = plane2 + stride_o_k
    tl.store(plane0 + row_major, x, mask=mask)
    tl.store(plane1 + col_major, x, mask=mask)
    tl.store(plane2 + (length - 1 - row_major), x, mask=mask)
    tl.store(plane3 + (length - 1 - col_major), x, mask=mask)


@triton.jit
def _cross_merge_kernel(
    y_ptr,
    out_ptr,
    dim,
    height,
    width,
    stride_y_b,
    stride_y_k,
    stride_y_d,
    stride_y_l,
    stride_o_b,
    stride_o_d,
    stride_o_h,
    stride_o_w,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    ACC_F64: tl.constexpr,
):
    """y and out any strides; the sum in fp32 (fp64 with ACC_F64), in the reference's order."""
    batch, chans, rows, cols, mask = _tile(dim, height, width, BLOCK_D, BLOCK_H, BLOCK_W)
    length = height * width
    row_major = rows * width + cols
    col_major = cols * height + rows
    plane0 = y_ptr + batch * stride_y_b + chans * stride_y_d
    plane1 = plane0 + stride_y_k
    plane2 = plane1 + stride_y_k
    plane3 = plane2 + stride_y_k
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    y0 = tl.load(plane0 + row_major * stride_y_l, mask=mask).to(acc_dtype)
    y2 = tl.load(plane2 + (length - 1 - row_major) * stride_y_l, mask=mask).to(acc_dtype)
    y1 = tl.load(plane1 + col_major * stride_y_l, mask=mask).to(acc_dtype)
    y3 = tl.load(plane3 + (length - 1 - col_major) * stride_y_l, mask=mask).to(acc_dtype)
    total = (y0 + y2) + (y1 + y3)
    out_ptrs = out_ptr + batch * stride_o_b + chans * stride_o_d + rows * stride_o_h + cols * stride_o_w
    tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(batch: int, dim: int, height: int, width: int, config: CrossScanConfig) -> tuple[int, int, int]:
    tiles = triton.cdiv(height, config.block_h) * triton.cdiv(width, config.block_w)
    return tiles, triton.cdiv(dim, config.block_d), batch


def _scan(x: Tensor, config: CrossScanConfig | None) -> Tensor:
    batch, dim, height, width = x.shape
    out = torch.empty(batch, 4, dim, height * width, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    config = config or default_config(dim, height, width, _channel_last(x))
    _cross_scan_kernel[_grid(batch, dim, height, width, config)](
        x,
        out,
        dim,
        height,
        width,
        *x.stride(),
        out.stride(0),
        out.stride(1),
        BLOCK_D=config.block_d,
        BLOCK_H=config.block_h,
        BLOCK_W=config.block_w,
        num_warps=config.warps,
    )
    return out


def _merge(y: Tensor, height: int, width: int, channel_last: bool, config: CrossScanConfig | None) -> Tensor:
    batch, _, dim, _ = y.shape
    memory_format = torch.channels_last if channel_last else torch.contiguous_format
    out = torch.empty(batch, dim, height, width, dtype=y.dtype, device=y.device, memory_format=memory_format)
    if out.numel() == 0:
        return out
    config = config or default_config(dim, height, width, _channel_last(out))
    _cross_merge_kernel[_grid(batch, dim, height, width, config)](
        y,
        out,
        dim,
        height,
        width,
        *y.stride(),
        *out.stride(),
        BLOCK_D=config.block_d,
        BLOCK_H=config.block_h,
        BLOCK_W=config.block_w,
        ACC_F64=y.dtype == torch.float64,
        num_warps=config.warps,
    )
    return out


class _CrossScan(torch.autograd.Function):
    """x (batch, dim, H, W) -> (batch, 4, dim, H*W); the backward is a cross-merge, in x's layout."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, config: CrossScanConfig | None) -> Tensor:
        ctx.height, ctx.width = x.shape[2], x.shape[3]
        ctx.channel_last = _channel_last(x)
        return _scan(x, config)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _CrossMerge.apply(grad, ctx.height, ctx.width, ctx.channel_last, None), None


class _CrossMerge(torch.autograd.Function):
    """y (batch, 4, dim, H*W) -> (batch, dim, H, W), channels-last when asked; the backward is a cross-scan."""

    @staticmethod
    def forward(
        ctx: Any, y: Tensor, height: int, width: int, channel_last: bool, config: CrossScanConfig | None
    ) -> Tensor:
        return _merge(y, height, width, channel_last, config)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        return _CrossScan.apply(grad, None), None, None, None, None


def cross_scan_triton(x: Tensor, *, config: CrossScanConfig | None = None) -> Tensor:
    """VMamba's cross-scan on the GPU in Triton; same contract as `mambakit.ops.cross_scan` (x already checked):
    x (batch, dim, H, W) of any strides and float dtype -> a contiguous (batch, 4, dim, H*W) in x's dtype,
    differentiable. `config` picks the tile (default: `default_config` for x's layout)."""
    return _CrossScan.apply(x, config)


def cross_merge_triton(y: Tensor, height: int, width: int, *, config: CrossScanConfig | None = None) -> Tensor:
    """VMamba's cross-merge (the adjoint of the cross-scan) on the GPU in Triton; same contract as
    `mambakit.ops.cross_merge` (y already checked): y (batch, 4, dim, height*width) of any strides -> a contiguous
    (batch, dim, height, width) in y's dtype, summed in fp32, differentiable."""
    return _CrossMerge.apply(y, height, width, False, config)
