"""The `triton` backend's depthwise causal convolution: forward, backward and decode-step GPU kernels.

out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - (W-1) + k]), the W-1 inputs before x coming from
`initial_states` (zeros by default). The kernels take W <= MAX_WIDTH (mamba-ssm's d_conv is 2-4); wider filters
and float64 go to the reference implementation. All arithmetic is fp32 whatever the input dtype.

A program owns BLOCK_D channels x LANES runs of STEPS consecutive steps of one batch element and walks its runs
step by step, keeping the last W inputs in registers (a sliding window): every input is read once, plus a halo
of W-1 steps per run from L1/L2. How one step of all runs, a (channels, runs) column, is read depends on which
axis of x is contiguous, so that the loads coalesce along it:
- channels (x a transposed view of a (batch, L, 2 dim) projection, as mamba-ssm's Mamba mixer makes it): a
  column is a row of contiguous channels, one coalesced load per step;
- steps: the program loads its (channels, runs, STEPS) tile at once, 16 bytes per thread, each thread holding
  whole runs, and picks the columns out of its registers (no data moves between threads).
The output has x's layout: for channels contiguous, a (batch, L, dim)-contiguous tensor, which a linear layer on
out.transpose(1, 2) (the mixer's x_proj) reads without a copy.

The backward recomputes the pre-activation instead of saving it. Per run it walks STEPS + W-1 steps, computes
g_t = dout_t silu'(pre_t) once per step and, with the last W of them in registers,
dx_t = sum_k weight[:, k] g_{t+W-1-k}; the gradient of the initial states is the same sum at the W-1 positions
before step 0. Weight and bias gradients are per-program sums added up with fp32 atomics (so their last bits
can change from run to run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..errors import UserError
from .backends import alert_not_deterministic

# _FAST_LOG: off in the interpreter, which has no PTX
from .triton_scan import _FAST_LOG, LOG2E, _like_steps, _or, require_powers_of_two

MAX_WIDTH = 4


@dataclass(frozen=True)
class ConvConfig:
    """Tile of one program: `block_d` channels x `lanes` runs of `steps` consecutive steps, `warps` warps; a
    backward program walks `bwd_tiles` such tiles along L. All powers of two. With steps contiguous, a run is
    what one thread loads at once, so `steps` should be 16 bytes of the dtype, and at least W-1 (the halo is
    taken from the neighbouring run)."""

    block_d: int
    lanes: int
    steps: int
    warps: int = 4
    bwd_tiles: int = 1

    def __post_init__(self) -> None:
        require_powers_of_two(self)


#: The default backward walks several tiles per program only where the grid keeps at least this many programs,
#: ~16 resident per SM of an H100: enough loads in flight to keep its memory busy.
_MIN_BWD_PROGRAMS = 2048


def default_config(x: Tensor) -> ConvConfig:
    """Tile shapes for x's layout, dtype and size (SASS instructions per element quoted for bf16, width 4, silu,
    sm_90). Channels contiguous: 256 channels x 32 steps on two warps, 4 channels per thread, so that the
    per-step address and mask arithmetic is shared by 4 elements (15 forward, 32 backward; 22 and 39 with 2 per
    thread), and the halo adds 3 steps per 32. Steps contiguous: 8 channels x 32 runs of one 16-byte vector, a
    warp reading 512 contiguous bytes of one channel (19 forward); where the grid is large, the backward walks
    4 such tiles per program (40 per element instead of 56: its set-up and the sums over the runs are shared)."""
    if _channel_last(x):
        return ConvConfig(block_d=256, lanes=1, steps=32, warps=2)
    config = ConvConfig(block_d=8, lanes=32, steps=max(16 // x.element_size(), MAX_WIDTH - 1), warps=4)
    batch, dim, length = x.shape
    programs = triton.cdiv(length, config.lanes * config.steps) * triton.cdiv(dim, config.block_d) * batch
    return replace(config, bwd_tiles=4) if programs >= 4 * _MIN_BWD_PROGRAMS else config


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    """1 / (1 + exp(-x)). FAST_MATH takes the hardware exp2 and reciprocal without their subnormal handling
    (4 instructions instead of ~10, error ~2 ulp; exp(-x) = inf gives 0); the interpreter has neither."""
    if FAST_MATH:
        e = tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [-x * LOG2E], dtype=tl.float32, is_pure=True, pack=1
        )
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e], dtype=tl.float32, is_pure=True, pack=1
        )
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tap(w_rows, stride_w_k, chan_mask, j: tl.constexpr, W: tl.constexpr, BY_LAG: tl.constexpr):
    column = tl.load(w_rows + (W - 1 - j if BY_LAG else j) * stride_w_k, mask=chan_mask & (j < W), other=0.0)
    return column.to(tl.float32)[:, None]


@triton.jit
def _taps(w_rows, stride_w_k, chan_mask, W: tl.constexpr, BY_LAG: tl.constexpr):
    """The weights as four (channels, 1) fp32 columns, by lag (tap j multiplies the input j steps back, i.e.
    weight[:, W-1-j]) or, with BY_LAG off, in weight order. Taps past W are zero and never used (W <= 4)."""
    return (
        _tap(w_rows, stride_w_k, chan_mask, 0, W, BY_LAG),
        _tap(w_rows, stride_w_k, chan_mask, 1, W, BY_LAG),
        _tap(w_rows, stride_w_k, chan_mask, 2, W, BY_LAG),
        _tap(w_rows, stride_w_k, chan_mask, 3, W, BY_LAG),
    )


@triton.jit
def _load_bias(bias_ptr, chans, chan_mask, HAS_BIAS: tl.constexpr):
    """The bias as a (channels, 1) fp32 column, or 0."""
    return tl.load(bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32)[:, None] if HAS_BIAS else 0.0


@triton.jit
def _dot_lags(acc, t0, t1, t2, t3, v0, v1, v2, v3, W: tl.constexpr):
    """acc + sum_j t_j v_j over the first W of the four pairs."""
    acc += t0 * v0
    if W > 1:
        acc += t1 * v1
    if W > 2:
        acc += t2 * v2
    if W > 3:
        acc += t3 * v3
    return acc


@triton.jit
def _load_x(x_ptrs, init_ptrs, pos, mask, length, HALO: tl.constexpr, HAS_INIT: tl.constexpr, W: tl.constexpr):
    """The convolution's input at steps `pos` as fp32: x in [0, length), the initial states in [-(W-1), 0),
    zero elsewhere. Only HALO loads can reach before step 0."""
    in_x = mask & (pos < length)
    if HALO:
        in_x = in_x & (pos >= 0)
    values = tl.load(x_ptrs, mask=in_x, other=0.0).to(tl.float32)
    if HALO and HAS_INIT:
        values += tl.load(init_ptrs, mask=mask & (pos < 0) & (pos >= 1 - W), other=0.0).to(tl.float32)
    return values


@triton.jit
def _column(tile, steps, v):
    """tile[:, :, v] of a (channels, runs, STEPS) fp32 tile whose last axis lies in each thread's registers, so
    the selection resolves per register at compile time. Summed as integers because x + 0 folds away for
    them, not for floats (-0.0 + 0.0 is +0.0)."""
    bits = tl.where(steps == v, tile.to(tl.int32, bitcast=True), 0)
    return tl.sum(bits, axis=2).to(tl.float32, bitcast=True)


@triton.jit
def _conv_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    out_ptr,
    dim,
    length,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_o_b,
    stride_o_d,
    stride_o_l,
    stride_w_d,
    stride_w_k,
    stride_i_b,
    stride_i_d,
    stride_i_k,
    W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    LANES: tl.constexpr,
    STEPS: tl.constexpr,
    CHANNEL_LAST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    SILU: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """CHANNEL_LAST: x and out have channel stride 1 (their step strides are arguments); otherwise step stride 1."""
    batch = tl.program_id(2).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < dim
    mask = chan_mask[:, None]
    starts = tl.program_id(0) * (LANES * STEPS) + tl.arange(0, LANES) * STEPS  # each run's first step
    a0, a1, a2, a3 = _taps(w_ptr + chans * stride_w_d, stride_w_k, chan_mask, W, True)
    bias = _load_bias(bias_ptr, chans, chan_mask, HAS_BIAS)
    init_rows = init_ptr + batch * stride_i_b + chans[:, None] * stride_i_d
    if CHANNEL_LAST:
        x_runs = x_ptr + batch * stride_x_b + chans[:, None] + (starts.to(tl.int64) * stride_x_l)[None, :]
        out_runs = out_ptr + batch * stride_o_b + chans[:, None] + (starts.to(tl.int64) * stride_o_l)[None, :]
    else:
        steps = tl.arange(0, STEPS)[None, None, :]
        pos = starts[None, :, None] + steps
        mask3 = mask[:, :, None]
        x_rows = x_ptr + batch * stride_x_b + chans.to(tl.int64)[:, None, None] * stride_x_d
        tile = _load_x(x_rows + pos, x_rows, pos, mask3, length, False, HAS_INIT, W)
        before = _load_x(
            x_rows + pos - STEPS,
            init_rows[:, :, None] + (pos - STEPS + W - 1) * stride_i_k,
            pos - STEPS,
            mask3,
            length,
            True,
            HAS_INIT,
            W,
        )
        out_tile = tl.zeros((BLOCK_D, LANES, STEPS), dtype=tl.float32)
    # x1, x2, x3: the input 1, 2, 3 steps back, filled by the W-1 halo steps before the first output.
    x1 = tl.zeros((BLOCK_D, LANES), dtype=tl.float32)
    x2 = x1
    x3 = x1
    for v in tl.static_range(1 - W, STEPS):
        if CHANNEL_LAST:
            pos_v = (starts + v)[None, :]
            xv = _load_x(
                x_runs + v * stride_x_l,
                init_rows + (pos_v + W - 1) * stride_i_k,
                pos_v,
                mask,
                length,
                v < 0,
                HAS_INIT,
                W,
            )
        elif v < 0:
            xv = _column(before, steps, STEPS + v)
        else:
            xv = _column(tile, steps, v)
        if v >= 0:
            y = _dot_lags(bias, a0, a1, a2, a3, xv, x1, x2, x3, W)
            if SILU:
                y *= _sigmoid(y, FAST_MATH)
            if CHANNEL_LAST:
                tl.store(out_runs + v * stride_o_l, y.to(out_ptr.dtype.element_ty), mask=mask & (pos_v < length))
            else:
                out_tile = tl.where(steps == v, y[:, :, None], out_tile)
        x3 = x2
        x2 = x1
        x1 = xv
    if not CHANNEL_LAST:
        out_rows = out_ptr + batch * stride_o_b + chans.to(tl.int64)[:, None, None] * stride_o_d
        tl.store(out_rows + pos, out_tile.to(out_ptr.dtype.element_ty), mask=mask3 & (pos < length))


@triton.jit
def _conv_bwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    dout_ptr,
    dx_ptr,
    dw_ptr,
    dinit_ptr,
    dim,
    length,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_g_b,
    stride_g_d,
    stride_g_l,
    stride_dx_b,
    stride_dx_d,
    stride_dx_l,
    stride_w_d,
    stride_w_k,
    stride_i_b,
    stride_i_d,
    stride_i_k,
    W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    LANES: tl.constexpr,
    STEPS: tl.constexpr,
    TILES: tl.constexpr,
    CHANNEL_LAST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    WANT_DINIT: tl.constexpr,
    SILU: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """x, dout and dx share a layout as in the forward. A program walks TILES consecutive tiles of
    LANES x STEPS steps, so that its set-up and its weight-gradient sums are shared by more steps. dw_ptr, a
    zeroed fp32 (W+1, dim), receives the weight gradient, transposed, in its first W rows and the bias gradient in
    the last; dinit_ptr is a contiguous (batch, dim, W-1)."""
    batch = tl.program_id(2).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = chans < dim
    mask = chan_mask[:, None]
    w_rows = w_ptr + chans * stride_w_d
    a0, a1, a2, a3 = _taps(w_rows, stride_w_k, chan_mask, W, True)  # recompute the pre-activation
    c0, c1, c2, c3 = _taps(w_rows, stride_w_k, chan_mask, W, False)  # dx_t = sum_k weight[:, k] g_{t+W-1-k}
    bias = _load_bias(bias_ptr, chans, chan_mask, HAS_BIAS)
    init_rows = init_ptr + batch * stride_i_b + chans[:, None] * stride_i_d
    zero = tl.zeros((BLOCK_D, LANES), dtype=tl.float32)
    dw0, dw1, dw2, dw3, dbias = zero, zero, zero, zero, zero  # per-lag weight gradient sums: dw_j for lag j
    for tile in range(TILES):  # a constant trip count: with TILES = 1 no loop is left
        t0 = (tl.program_id(0) * TILES + tile) * (LANES * STEPS)
        starts = t0 + tl.arange(0, LANES) * STEPS
        if CHANNEL_LAST:
            x_runs = x_ptr + batch * stride_x_b + chans[:, None] + (starts.to(tl.int64) * stride_x_l)[None, :]
            g_runs = dout_ptr + batch * stride_g_b + chans[:, None] + (starts.to(tl.int64) * stride_g_l)[None, :]
            dx_runs = dx_ptr + batch * stride_dx_b + chans[:, None] + (starts.to(tl.int64) * stride_dx_l)[None, :]
        else:
            steps = tl.arange(0, STEPS)[None, None, :]
            pos = starts[None, :, None] + steps
            mask3 = mask[:, :, None]
            x_rows = x_ptr + batch * stride_x_b + chans.to(tl.int64)[:, None, None] * stride_x_d
            g_rows = dout_ptr + batch * stride_g_b + chans.to(tl.int64)[:, None, None] * stride_g_d
            x_tile = _load_x(x_rows + pos, x_rows, pos, mask3, length, False, HAS_INIT, W)
            x_before = _load_x(
                x_rows + pos - STEPS,
                init_rows[:, :, None] + (pos - STEPS + W - 1) * stride_i_k,
                pos - STEPS,
                mask3,
                length,
                True,
                HAS_INIT,
                W,
            )
            g_tile = tl.load(g_rows + pos, mask=mask3 & (pos < length), other=0.0).to(tl.float32)
            g_after = tl.load(g_rows + pos + STEPS, mask=mask3 & (pos + STEPS < length), other=0.0).to(tl.float32)
            if SILU:  # inputs after the run enter the pre-activations of the steps whose g the run's dx needs
                x_after = _load_x(x_rows + pos + STEPS, x_rows, pos + STEPS, mask3, length, False, HAS_INIT, W)
            dx_tile = tl.zeros((BLOCK_D, LANES, STEPS), dtype=tl.float32)
        # Inputs 1-3 steps back, g 1-3 steps back (zero before step 0, which makes the sums at the first W-1 steps
        # the initial states' gradient).
        x1, x2, x3 = zero, zero, zero
        g1, g2, g3 = zero, zero, zero
        for v in tl.static_range(1 - W, STEPS + W - 1):
            if CHANNEL_LAST:
                pos_v = (starts + v)[None, :]
            if SILU or v < STEPS:
                if CHANNEL_LAST:
                    xv = _load_x(
                        x_runs + v * stride_x_l,
                        init_rows + (pos_v + W - 1) * stride_i_k,
                        pos_v,
                        mask,
                        length,
                        v < 0,
                        HAS_INIT,
                        W,
                    )
                elif v < 0:
                    xv = _column(x_before, steps, STEPS + v)
                elif v < STEPS:
                    xv = _column(x_tile, steps, v)
                else:
                    xv = _column(x_after, steps, v - STEPS)
            if v >= 0:
                if CHANNEL_LAST:
                    gv = tl.load(g_runs + v * stride_g_l, mask=mask & (pos_v < length), other=0.0).to(tl.float32)
                elif v < STEPS:
                    gv = _column(g_tile, steps, v)
                else:
                    gv = _column(g_after, steps, v - STEPS)
                if SILU:
                    pre = _dot_lags(bias, a0, a1, a2, a3, xv, x1, x2, x3, W)
                    sig = _sigmoid(pre, FAST_MATH)
                    gv *= sig * (1.0 + pre * (1.0 - sig))
                if v < STEPS:
                    dbias += gv
                    dw0 += gv * xv
                    if W > 1:
                        dw1 += gv * x1
                    if W > 2:
                        dw2 += gv * x2
                    if W > 3:
                        dw3 += gv * x3
                u = v - (W - 1)  # the step whose dx is complete once g_v is known
                if u >= 0:
                    dxu = _dot_lags(0.0, c0, c1, c2, c3, gv, g1, g2, g3, W)
                    if CHANNEL_LAST:
                        tl.store(
                            dx_runs + u * stride_dx_l,
                            dxu.to(dx_ptr.dtype.element_ty),
                            mask=mask & ((starts + u) < length)[None, :],
                        )
                    else:
                        dx_tile = tl.where(steps == u, dxu[:, :, None], dx_tile)
                elif WANT_DINIT:  # step u < 0 is initial state u + W-1, for the run that starts at step 0
                    dinit = _dot_lags(0.0, c0, c1, c2, c3, gv, g1, g2, g3, W)
                    dinit = tl.sum(tl.where((starts == 0)[None, :], dinit, 0.0), axis=1)
                    tl.store(dinit_ptr + (batch * dim + chans) * (W - 1) + v, dinit, mask=chan_mask & (t0 == 0))
                g3 = g2
                g2 = g1
                g1 = gv
            if SILU or v < STEPS:
                x3 = x2
                x2 = x1
                x1 = xv
        if not CHANNEL_LAST:
            dx_rows = dx_ptr + batch * stride_dx_b + chans.to(tl.int64)[:, None, None] * stride_dx_d
            tl.store(dx_rows + pos, dx_tile.to(dx_ptr.dtype.element_ty), mask=mask3 & (pos < length))
    # Weight and bias gradients: this program's sums, added across programs with atomics (one vector atomic per
    # thread and tap on sm_90, as each row of the buffer is contiguous in channels). A row per program instead
    # (5 floats per channel and 32 steps) would add ~10% to the bytes written, and as much again to sum them.
    tl.atomic_add(dw_ptr + (W - 1) * dim + chans, tl.sum(dw0, axis=1), mask=chan_mask, sem="relaxed")
    if W > 1:
        tl.atomic_add(dw_ptr + (W - 2) * dim + chans, tl.sum(dw1, axis=1), mask=chan_mask, sem="relaxed")
    if W > 2:
        tl.atomic_add(dw_ptr + (W - 3) * dim + chans, tl.sum(dw2, axis=1), mask=chan_mask, sem="relaxed")
    if W > 3:
        tl.atomic_add(dw_ptr + (W - 4) * dim + chans, tl.sum(dw3, axis=1), mask=chan_mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dw_ptr + W * dim + chans, tl.sum(dbias, axis=1), mask=chan_mask, sem="relaxed")


@triton.jit
def _conv_update_kernel(
    x_ptr,
    state_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    dim,
    stride_x_b,
    stride_x_d,
    stride_s_b,
    stride_s_d,
    stride_s_k,
    stride_w_d,
    stride_w_k,
    W: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """out = act(bias + weight . [state, x]); the state (batch, dim, W-1) shifts one step to end with x."""
    batch = tl.program_id(1).to(tl.int64)
    chans = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = chans < dim
    w_rows = w_ptr + chans * stride_w_d
    state_rows = state_ptr + batch * stride_s_b + chans * stride_s_d
    x = tl.load(x_ptr + batch * stride_x_b + chans * stride_x_d, mask=mask, other=0.0)
    y = tl.load(w_rows + (W - 1) * stride_w_k, mask=mask, other=0.0).to(tl.float32) * x.to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + chans, mask=mask, other=0.0).to(tl.float32)
    # s0, s1, s2: the state's columns, oldest first, kept in their dtype for the shift.
    if W > 1:
        s0 = tl.load(state_rows, mask=mask, other=0.0)
        y += tl.load(w_rows, mask=mask, other=0.0).to(tl.float32) * s0.to(tl.float32)
    if W > 2:
        s1 = tl.load(state_rows + stride_s_k, mask=mask, other=0.0)
        y += tl.load(w_rows + stride_w_k, mask=mask, other=0.0).to(tl.float32) * s1.to(tl.float32)
    if W > 3:
        s2 = tl.load(state_rows + 2 * stride_s_k, mask=mask, other=0.0)
        y += tl.load(w_rows + 2 * stride_w_k, mask=mask, other=0.0).to(tl.float32) * s2.to(tl.float32)
    if SILU:
        y *= _sigmoid(y, FAST_MATH)
    tl.store(out_ptr + batch * dim + chans, y.to(out_ptr.dtype.element_ty), mask=mask)
    # Every column is read before any is overwritten, also by threads that hold a replica of a channel.
    tl.debug_barrier()
    if W > 2:
        tl.store(state_rows, s1, mask=mask)
    if W > 3:
        tl.store(state_rows + stride_s_k, s2, mask=mask)
    if W > 1:
        tl.store(state_rows + (W - 2) * stride_s_k, x.to(state_ptr.dtype.element_ty), mask=mask)


def _channel_last(x: Tensor) -> bool:
    """Whether x's channels are contiguous and its steps are not (the mixer's transposed in_proj output)."""
    return x.stride(1) == 1 and (x.stride(2) != 1 or x.shape[2] == 1)


def _in_layout(t: Tensor, channel_last: bool) -> Tensor:
    """t (batch, dim, L) with unit channel stride, or unit step stride; copied only when it has neither."""
    if channel_last:
        return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)
    return t if t.stride(2) == 1 or t.shape[2] == 1 else t.contiguous()


def _empty(x: Tensor, channel_last: bool) -> Tensor:
    """A new (batch, dim, L) tensor like x whose channels are contiguous, or whose steps are (then in x's layout
    when x is dense, as the scan's results are)."""
    batch, dim, length = x.shape
    if channel_last:
        return torch.empty_strided(x.shape, (length * dim, 1, dim), dtype=x.dtype, device=x.device)
    return _like_steps(x)


def _launch(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_states: Tensor | None, config: ConvConfig
) -> tuple[tuple[int, int, int], tuple[int, ...], dict]:
    """What the forward and backward kernels share: the grid, the weight and initial-state strides, and the
    compile-time arguments."""
    batch, dim, length = x.shape
    grid = (triton.cdiv(length, config.lanes * config.steps), triton.cdiv(dim, config.block_d), batch)
    strides = (*weight.stride(), *(initial_states.stride() if initial_states is not None else (0, 0, 0)))
    meta = dict(
        W=weight.shape[1],
        BLOCK_D=config.block_d,
        LANES=config.lanes,
        STEPS=config.steps,
        CHANNEL_LAST=_channel_last(x),
        HAS_BIAS=bias is not None,
        HAS_INIT=initial_states is not None,
        FAST_MATH=_FAST_LOG,
        num_warps=config.warps,
    )
    return grid, strides, meta


class _TritonConv(torch.autograd.Function):
    """(x, weight, bias, initial_states) -> out, with the backward recomputing the pre-activation."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        initial_states: Tensor | None,
        silu: bool,
        config: ConvConfig,
    ) -> Tensor:
        # Width 1 has no initial states to read; the kernels never see the empty tensor (it may have no storage).
        init = initial_states if weight.shape[1] > 1 else None
        grid, strides, meta = _launch(x, weight, bias, init, config)
        out = _empty(x, meta["CHANNEL_LAST"])
        _conv_fwd_kernel[grid](
            x,
            weight,
            _or(bias, weight),
            _or(init, x),
            out,
            x.shape[1],
            x.shape[2],
            *x.stride(),
            *out.stride(),
            *strides,
            SILU=silu,
            **meta,
        )
        ctx.save_for_backward(x, weight, bias, init)
        ctx.silu, ctx.config = silu, config
        ctx.init_dtype = initial_states.dtype if initial_states is not None else None
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, init = ctx.saved_tensors
        alert_not_deterministic("the triton backend's causal_conv1d backward", "use backend='torch' or 'auto'")
        grid, strides, meta = _launch(x, weight, bias, init, ctx.config)
        grid = (triton.cdiv(grid[0], ctx.config.bwd_tiles), *grid[1:])
        batch, dim, length = x.shape
        width = weight.shape[1]
        dout = _in_layout(dout, meta["CHANNEL_LAST"])
        dx = _empty(x, meta["CHANNEL_LAST"])
        dw_dbias = x.new_zeros(width + 1, dim, dtype=torch.float32)
        dinit = x.new_zeros(batch, dim, width - 1, dtype=torch.float32) if ctx.needs_input_grad[3] else None
        want_dinit = dinit is not None and init is not None
        _conv_bwd_kernel[grid](
            x,
            weight,
            _or(bias, weight),
            _or(init, x),
            dout,
            dx,
            dw_dbias,
            dinit if want_dinit else dw_dbias,
            dim,
            length,
            *x.stride(),
            *dout.stride(),
            *dx.stride(),
            *strides,
            TILES=ctx.config.bwd_tiles,
            WANT_DINIT=want_dinit,
            SILU=ctx.silu,
            **meta,
        )
        return (
            dx,
            dw_dbias[:width].t().to(weight.dtype) if ctx.needs_input_grad[1] else None,
            dw_dbias[width].to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None,
            dinit.to(ctx.init_dtype) if dinit is not None else None,
            None,
            None,
        )


def causal_conv1d_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
    *,
    config: ConvConfig | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Depthwise causal convolution on the GPU in Triton; same contract as `mambakit.ops.causal_conv1d`
    (arguments already checked), with gradients for x, weight, bias and `initial_states`, also through the
    returned final states.

    x (batch, dim, L) may have any strides, fp32, bf16 or fp16; the output has x's dtype and, when x's channels
    are contiguous (as mamba-ssm's mixer feeds it), contiguous channels too, else contiguous steps. Widths above
    MAX_WIDTH, float64 and empty inputs go to the reference implementation. `config` picks the tile shape
    (default: `default_config(x)`).
    """
    width = weight.shape[1]
    tensors = (x, weight, bias, initial_states)
    if x.numel() == 0 or width > MAX_WIDTH or any(t is not None and t.dtype == torch.float64 for t in tensors):
        from .reference import causal_conv1d_ref

        return causal_conv1d_ref(x, weight, bias, activation, initial_states, return_final_states)
    channel_last = _channel_last(x)
    config = config or default_config(x)
    if not channel_last and config.steps < width - 1:
        raise UserError(f"config.steps must be at least width - 1 = {width - 1} for this layout, got {config.steps}")
    out = _TritonConv.apply(
        _in_layout(x, channel_last), weight, bias, initial_states, activation in ("silu", "swish"), config
    )
    if not return_final_states:
        return out
    # The last W-1 inputs, a new tensor (a decode step updates it in place): from x, and from the initial states
    # where x is shorter than W-1. Autograd takes their gradients through the slicing.
    length = x.shape[2]
    if initial_states is not None:
        before = initial_states.to(x.dtype)
    else:
        before = x.new_zeros(x.shape[0], x.shape[1], width - 1)
    final = torch.cat([before[..., length:], x[..., max(0, length - (width - 1)) :]], dim=-1)
    return out, final


def causal_conv1d_update_triton(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """One step of the causal convolution on the GPU; same contract as `mambakit.ops.causal_conv1d_update`
    (arguments already checked): x (batch, dim), `conv_state` (batch, dim, width-1) shifted in place to end with
    x; returns (batch, dim) in x's dtype. Widths above MAX_WIDTH, float64 and empty inputs go to the reference."""
    width = weight.shape[1]
    tensors = (x, conv_state, weight, bias)
    if x.numel() == 0 or width > MAX_WIDTH or any(t is not None and t.dtype == torch.float64 for t in tensors):
        from .reference import causal_conv1d_update_ref

        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
    batch, dim = x.shape
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    block_d = min(256, triton.next_power_of_2(dim))
    # Width 1 has no state; the kernel never sees the empty tensor (it may have no storage).
    state, state_strides = (conv_state, conv_state.stride()) if width > 1 else (x, (0, 0, 0))
    _conv_update_kernel[(triton.cdiv(dim, block_d), batch)](
        x,
        state,
        weight,
        _or(bias, weight),
        out,
        dim,
        *x.stride(),
        *state_strides,
        *weight.stride(),
        W=width,
        BLOCK_D=block_d,
        HAS_BIAS=bias is not None,
        SILU=activation in ("silu", "swish"),
        FAST_MATH=_FAST_LOG,
        num_warps=4,
    )
    return out
