"""The `triton` backend's selective scan: forward and backward GPU kernels with the ops contract.

One program owns BLOCK_D channels of one channel group of one batch element and walks the sequence in tiles of
BLOCK_L steps; every input is read once. Inside a tile a loop runs over the N states, and for each the
recurrence h_t = a_t h_{t-1} + b_t over the tile's steps is one `tl.associative_scan` with the affine
combine, seeded with the state carried from the tile before. Looping over N (rather than holding a
(channels, N, steps) tile) keeps every tensor two-dimensional in the layout of the (channels, steps) loads,
so no layout conversion sits in the inner loop, and the sum over N for y accumulates in registers.

The backward recomputes instead of storing per-step states: the forward saves the state every
`bwd_block_l` steps, (batch, L / bwd_block_l, dim, N) fp32, i.e. O(batch*dim*L*N/bwd_block_l); the backward
walks its tiles from last to first, recomputes each tile's states from the saved one with the same scan,
and runs the adjoint lam_t = C_t gy_t + a_{t+1} lam_{t+1} (notes/selective-scan.md) as a scan of flipped
tiles seeded with the adjoint carried from the tile after. a_{t+1} is recomputed from delta at t+1 (a second
exp per element) rather than shifted across lanes, and a_t h_{t-1} is h_t - b_t, as in mamba-ssm, so no step
divides by a decay. Per-channel sums (dA, dD, d delta_bias and, time-invariant, dB/dC) accumulate per program
and are written per batch element, then summed on the host; per-step dB/dC are summed over the program's
channels, then added across channel blocks with atomics into fp32 buffers.

All state math is fp32 whatever the input dtype; decays are exp(delta*A) <= 1 for A < 0 and nothing
divides by a product of decays, so the scan is stable at any length (checked at L = 2^20).

Measurements, versions and what limits them: bench/results/gpu_notes.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from ..errors import UserError
from .backends import alert_not_deterministic
from .reference import channel_groups

LOG2E = tl.constexpr(1.4426950408889634)
# Triton's CPU interpreter (TRITON_INTERPRET=1, used by the tests without a GPU) has no hardware intrinsics.
_FAST_LOG = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def require_powers_of_two(config: object) -> None:
    """Raise ValueError unless every field of a launch-shape dataclass is a power of two."""
    for name, value in vars(config).items():
        if value < 1 or value & (value - 1):
            raise UserError(f"{name} must be a power of two, got {value}")


@dataclass(frozen=True)
class ScanConfig:
    """Tile shapes of the two kernels: channels and steps per tile, warps per program and how many iterations
    of the loop over the N states are unrolled (powers of two). The backward's tile length (at least N) is
    also how often the forward saves a state for it."""

    fwd_block_d: int = 1
    fwd_block_l: int = 256
    fwd_warps: int = 1
    fwd_unroll: int = 16
    bwd_block_d: int = 2
    bwd_block_l: int = 128
    bwd_warps: int = 1
    bwd_unroll: int = 1

    def __post_init__(self) -> None:
        require_powers_of_two(self)


#: With 8 channels x 32 steps per warp (fewest instructions per element) the grid has rows / 8 warps; below
#: this many, one to four channels x 64-256 steps per warp (more warps, more shuffles) measured faster.
_MIN_WARPS_FOR_WIDE_TILES = 2048


def default_config(batch: int, dim: int) -> ScanConfig:
    """The tile shapes measured fastest on an H100 for batch x dim channel rows (bench/results/gpu_notes.md;
    sweep on commit 323dc0b: B8 D2048, B8 D1536 and B1 D1536)."""
    rows = batch * dim
    if rows >= 8 * _MIN_WARPS_FOR_WIDE_TILES:
        return ScanConfig(fwd_block_d=8, fwd_block_l=32, fwd_unroll=1, bwd_block_d=8, bwd_block_l=32)
    if rows >= 4096:
        return ScanConfig(bwd_block_d=4, bwd_block_l=64)
    return ScanConfig(bwd_block_d=2, bwd_block_l=256)


@triton.jit
def _affine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1, then h -> a2 h + b2: the combine of the linear recurrence h_t = a_t h_{t-1} + b_t."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x, FAST_LOG: tl.constexpr):
    """log(1 + exp(x)) without overflow for large x and without rounding small values to 0 for very negative x
    (log(1 + e) loses e < 6e-8 in fp32, so use its series there). FAST_LOG takes the hardware log2 (one
    instruction, absolute error ~1e-7) instead of the accurate one (~30 instructions per step and channel);
    the interpreter has only the latter."""
    e = tl.exp(-tl.abs(x))
    log1p_e = libdevice.fast_logf(1.0 + e) if FAST_LOG else tl.log(1.0 + e)
    return tl.maximum(x, 0.0) + tl.where(e < 1e-4, e * (1.0 - 0.5 * e), log1p_e)


@triton.jit
def _delta(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_LOG: tl.constexpr):
    """(delta + bias, softplus of it) as fp32; the second is the first when SOFTPLUS is off."""
    x = raw.to(tl.float32)
    if HAS_BIAS:
        x += bias[:, None]
    if SOFTPLUS:
        return x, _softplus(x, FAST_LOG)
    return x, x


@triton.jit
def _step_mask(offs_l, step):
    """offs_l == step, written so the compiler can drop the test for most registers when `step` is a
    compile-time constant (an unrolled loop over states): a thread holds runs of at least 4 consecutive steps
    (the loads are vectorised), so `offs_l % 4 == step % 4` is then known per register."""
    return (offs_l % 4 == step % 4) & (offs_l == step)


@triton.jit
def _column(tile, offs_l, step):
    """tile[:, step] as a row vector; -0.0 because x + (-0.0) == x lets the sum skip the other registers."""
    return tl.sum(tl.where(_step_mask(offs_l, step)[None, :], tile, -0.0), axis=1)


@triton.jit
def _with_column(tile, offs_l, step, values):
    """tile with tile[:, step] = values."""
    return tl.where(_step_mask(offs_l, step)[None, :], values[:, None], tile)


@triton.jit
def _seeded_scan(decay, inputs, offs_l, h_prev, REVERSE: tl.constexpr):
    """The states of h_t = decay_t h_{t-1} + inputs_t over a tile (run from the end when REVERSE), h_prev
    being the state before the tile's first step (after its last one when REVERSE). The seed enters through
    the first step's input, so the scan's cumulative decays are needed only inside the scan.

    The reverse scan is a forward scan of flipped tiles: flipping the steps a thread holds is free (register
    renaming), while `associative_scan(reverse=True)` costs a dozen shuffles per element in Triton 3.6-3.8."""
    first = offs_l.shape[0] - 1 if REVERSE else 0
    # -0.0: x + (-0.0) == x, so the additions vanish for the registers that cannot hold the first step.
    seeded = inputs + tl.where(_step_mask(offs_l, first)[None, :], decay * h_prev[:, None], -0.0)
    if REVERSE:
        decay, seeded = tl.flip(decay, 1), tl.flip(seeded, 1)
    _, states = tl.associative_scan((decay, seeded), axis=1, combine_fn=_affine)
    if REVERSE:
        states = tl.flip(states, 1)
    return states


@triton.jit
def _load_bc(base, n, stride_n, t, tmask, chans, chan_mask, stride_chan, VARIABLE: tl.constexpr):
    """B or C (fp32) for state n over a tile, shaped to broadcast against (channels, steps): per-step values
    are loaded as a full (channels, steps) tile of equal rows, which puts them in the layout of the other
    tiles with no conversion (the repeated rows hit L1); time-invariant ones are a (channels, 1) column."""
    if VARIABLE:
        ptrs = base + n * stride_n + t
        values = tl.load(
            tl.broadcast_to(ptrs[None, :], (chans.shape[0], t.shape[0])),
            mask=tl.broadcast_to(tmask[None, :], (chans.shape[0], t.shape[0])),
            other=0.0,
        )
    else:
        values = tl.load(base + chans * stride_chan + n * stride_n, mask=chan_mask, other=0.0)[:, None]
    return values


@triton.jit
def _per_state_tile(row_ptrs, offs_l, chan_mask, N: tl.constexpr):
    """The (channels, N) values at row_ptrs[d] + n as a (channels, BLOCK_L) tile whose column n holds state n.

    Per-state carries (states, adjoints, partial sums) live in such tiles, in the registers and the layout of
    the tiles they meet, so a state's column costs one short reduction: carried through memory instead, each
    state of each tile would wait a round trip to L2 (BLOCK_L >= N)."""
    return tl.load(row_ptrs[:, None] + offs_l[None, :], mask=chan_mask[:, None] & (offs_l < N)[None, :], other=0.0)


@triton.jit
def _store_per_state(row_ptrs, tile, offs_l, chan_mask, N: tl.constexpr):
    tl.store(row_ptrs[:, None] + offs_l[None, :], tile, mask=chan_mask[:, None] & (offs_l < N)[None, :])


@triton.jit
def _scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    state_ptr,
    saved_ptr,
    length,
    group_dim,
    stride_u_b,
    stride_u_d,
    stride_dt_b,
    stride_dt_d,
    stride_z_b,
    stride_z_d,
    stride_out_b,
    stride_out_d,
    stride_A_d,
    stride_A_n,
    stride_B_b,
    stride_B_g,
    stride_B_d,
    stride_B_n,
    stride_C_b,
    stride_C_g,
    stride_C_d,
    stride_C_n,
    N: tl.constexpr,
    NP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    SAVE_EVERY: tl.constexpr,
    VARIABLE_B: tl.constexpr,
    VARIABLE_C: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    FAST_LOG: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """state_ptr (batch, dim, N) fp32 holds the initial state on entry and the last state on exit; in between
    it carries the state from tile to tile, one load and one store per state and tile. (Carrying the states
    as columns of a register tile, as the backward does, measured slower here: 1.33 -> 1.82 ms at B8 D2048
    L4096, 3.1 -> 5.8 ms at B1 D1536 L65536; the memory round trip overlaps with the scan, the column
    extraction sits on its critical path.) With SAVE_STATES it also writes the state before every
    SAVE_EVERY-th step to saved_ptr (batch, n_saved, dim, N) for the backward."""
    pid_d = tl.program_id(0)
    group = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)  # 64-bit offsets: batch * dim * L passes 2^31 at long L
    dim = tl.num_programs(1) * group_dim
    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = j < group_dim
    chans = group * group_dim + j
    offs_l = tl.arange(0, BLOCK_L)
    cols = tl.arange(0, NP)
    state_mask = chan_mask[:, None] & (cols[None, :] < N)
    state_rows = state_ptr + (batch * dim + chans) * N
    skip = tl.load(D_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32) if HAS_D else None
    bias = tl.load(bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    u_rows = u_ptr + batch * stride_u_b + chans * stride_u_d
    dt_rows = delta_ptr + batch * stride_dt_b + chans * stride_dt_d
    z_rows = z_ptr + batch * stride_z_b + chans * stride_z_d
    out_rows = out_ptr + batch * stride_out_b + chans * stride_out_d
    B_base = B_ptr + batch * stride_B_b + group * stride_B_g
    C_base = C_ptr + batch * stride_C_b + group * stride_C_g
    n_saved = tl.cdiv(length, SAVE_EVERY)

    for t0 in range(0, length, BLOCK_L):
        if SAVE_STATES and t0 % SAVE_EVERY == 0:
            saved_rows = saved_ptr + ((batch * n_saved + t0 // SAVE_EVERY) * dim + chans) * N
            tl.store(
                saved_rows[:, None] + cols[None, :],
                tl.load(state_rows[:, None] + cols[None, :], mask=state_mask),
                mask=state_mask,
            )
        t = t0 + offs_l
        tmask = t < length
        mask = chan_mask[:, None] & tmask[None, :]
        u = tl.load(u_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        dt_raw = tl.load(dt_rows[:, None] + t[None, :], mask=mask, other=0.0)
        _, dt = _delta(dt_raw, bias, HAS_BIAS, SOFTPLUS, FAST_LOG)
        dt = tl.where(mask, dt, 0.0)  # padded steps keep the state: decay 1, input 0
        dt_u = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        for n in tl.range(0, N, loop_unroll_factor=UNROLL):
            a = tl.load(A_ptr + chans * stride_A_d + n * stride_A_n, mask=chan_mask, other=0.0).to(tl.float32)
            decay = tl.exp2(dt * (a * LOG2E)[:, None])
            B_n = _load_bc(B_base, n, stride_B_n, t, tmask, chans, chan_mask, stride_B_d, VARIABLE_B)
            C_n = _load_bc(C_base, n, stride_C_n, t, tmask, chans, chan_mask, stride_C_d, VARIABLE_C)
            h_prev = tl.load(state_rows + n, mask=chan_mask, other=0.0)
            states = _seeded_scan(decay, dt_u * B_n, offs_l, h_prev, False)
            y += states * C_n
            tl.store(state_rows + n, _column(states, offs_l, BLOCK_L - 1), mask=chan_mask)
            if SAVE_STATES:  # states at save points inside the tile (none when BLOCK_L <= SAVE_EVERY)
                for k in tl.static_range(1, BLOCK_L // SAVE_EVERY):
                    saved_n = saved_ptr + ((batch * n_saved + t0 // SAVE_EVERY + k) * dim + chans) * N + n
                    tl.store(
                        saved_n,
                        _column(states, offs_l, k * SAVE_EVERY - 1),
                        mask=chan_mask & (t0 + k * SAVE_EVERY < length),
                    )
        if HAS_D:
            y += skip[:, None] * u  # type: ignore[index]  # skip is None only while HAS_D, a constexpr, is off
        if HAS_Z:
            z = tl.load(z_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
            y *= z * _sigmoid(z)
        tl.store(out_rows[:, None] + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the carried states stored by one thread are read by all in the next tile


@triton.jit
def _scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    saved_ptr,
    dout_ptr,
    dlast_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dB_ptr,
    dC_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    dh0_ptr,
    length,
    group_dim,
    stride_u_b,
    stride_u_d,
    stride_dt_b,
    stride_dt_d,
    stride_z_b,
    stride_z_d,
    stride_g_b,
    stride_g_d,
    stride_du_b,
    stride_du_d,
    stride_ddt_b,
    stride_ddt_d,
    stride_dz_b,
    stride_dz_d,
    stride_A_d,
    stride_A_n,
    stride_B_b,
    stride_B_g,
    stride_B_d,
    stride_B_n,
    stride_C_b,
    stride_C_g,
    stride_C_d,
    stride_C_n,
    N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    VARIABLE_B: tl.constexpr,
    VARIABLE_C: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    WANT_DH0: tl.constexpr,
    FAST_LOG: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """dA_ptr and, for a time-invariant B or C, dB_ptr or dC_ptr receive (batch, dim, N) per-batch partial sums."""
    pid_d = tl.program_id(0)
    group = tl.program_id(1)
    n_groups = tl.num_programs(1)
    batch = tl.program_id(2).to(tl.int64)
    dim = n_groups * group_dim
    j = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_mask = j < group_dim
    chans = group * group_dim + j
    offs_l = tl.arange(0, BLOCK_L)
    state_rows = (batch * dim + chans) * N  # offsets of the (batch, dim, N) per-state tensors
    # lam: the adjoint dL/dh carried backwards, column n for state n: before a tile it is lam at the first step
    # of the tile after (at the end: the gradient of the returned last state).
    if HAS_DLAST:
        lam = _per_state_tile(dlast_ptr + state_rows, offs_l, chan_mask, N)
    else:
        lam = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dA = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)  # column n: this program's share of dA[:, n]
    dB_sum = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)  # a time-invariant B or C only, likewise
    dC_sum = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    skip = tl.load(D_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32) if HAS_D else None
    bias = tl.load(bias_ptr + chans, mask=chan_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    u_rows = u_ptr + batch * stride_u_b + chans * stride_u_d
    dt_rows = delta_ptr + batch * stride_dt_b + chans * stride_dt_d
    z_rows = z_ptr + batch * stride_z_b + chans * stride_z_d
    g_rows = dout_ptr + batch * stride_g_b + chans * stride_g_d
    du_rows = du_ptr + batch * stride_du_b + chans * stride_du_d
    ddt_rows = ddelta_ptr + batch * stride_ddt_b + chans * stride_ddt_d
    dz_rows = dz_ptr + batch * stride_dz_b + chans * stride_dz_d
    B_base = B_ptr + batch * stride_B_b + group * stride_B_g
    C_base = C_ptr + batch * stride_C_b + group * stride_C_g
    dBC_base = (batch * n_groups + group) * N * length  # per-step dB/dC: fp32 (batch, groups, N, L)
    n_tiles = tl.cdiv(length, BLOCK_L)

    for i in range(n_tiles):
        tile = n_tiles - 1 - i
        t = tile * BLOCK_L + offs_l
        tmask = t < length
        mask = chan_mask[:, None] & tmask[None, :]
        next_mask = chan_mask[:, None] & (t[None, :] + 1 < length)
        h_start = _per_state_tile(saved_ptr + ((batch * n_tiles + tile) * dim + chans) * N, offs_l, chan_mask, N)
        # Only what the loop over states needs stays live through it (registers limit occupancy here);
        # u, delta, dout and z are loaded again after it, from cache.
        u = tl.load(u_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        _, dt = _delta(tl.load(dt_rows[:, None] + t[None, :], mask=mask, other=0.0), bias, HAS_BIAS, SOFTPLUS, FAST_LOG)
        dt = tl.where(mask, dt, 0.0)
        dt_next_raw = tl.load(dt_rows[:, None] + t[None, :] + 1, mask=next_mask, other=0.0)
        _, dt_next = _delta(dt_next_raw, bias, HAS_BIAS, SOFTPLUS, FAST_LOG)
        dt_u = dt * u
        gy = tl.load(g_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
            gy *= z * _sigmoid(z)
        y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        lam_B = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)  # sum_n lam_t B_t
        w_A = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)  # sum_n A lam_t a_t h_{t-1}
        for n in tl.range(0, N, loop_unroll_factor=UNROLL):
            a = tl.load(A_ptr + chans * stride_A_d + n * stride_A_n, mask=chan_mask, other=0.0).to(tl.float32)
            a2 = (a * LOG2E)[:, None]
            decay = tl.exp2(dt * a2)
            # a_{t+1}; 1 past the end, where lam_{L-1} = C gy + (gradient of the last state).
            decay_next = tl.where(next_mask, tl.exp2(dt_next * a2), 1.0)
            B_n = _load_bc(B_base, n, stride_B_n, t, tmask, chans, chan_mask, stride_B_d, VARIABLE_B)
            C_n = _load_bc(C_base, n, stride_C_n, t, tmask, chans, chan_mask, stride_C_d, VARIABLE_C)
            inputs = dt_u * B_n
            states = _seeded_scan(decay, inputs, offs_l, _column(h_start, offs_l, n), False)
            y += states * C_n
            lam_t = _seeded_scan(decay_next, gy * C_n, offs_l, _column(lam, offs_l, n), True)
            lam = _with_column(lam, offs_l, n, _column(lam_t, offs_l, 0))
            lam_B += lam_t * B_n
            w = lam_t * (states - inputs)  # lam_t * a_t * h_{t-1} = dL/da_t * a_t
            w_A += w * a[:, None]
            dA = _with_column(dA, offs_l, n, _column(dA, offs_l, n) + tl.sum(w * dt, axis=1))
            if VARIABLE_B:
                tl.atomic_add(
                    dB_ptr + dBC_base + n * length + t, tl.sum(lam_t * dt_u, axis=0), mask=tmask, sem="relaxed"
                )
            else:
                dB_sum = _with_column(dB_sum, offs_l, n, _column(dB_sum, offs_l, n) + tl.sum(lam_t * dt_u, axis=1))
            if VARIABLE_C:
                tl.atomic_add(
                    dC_ptr + dBC_base + n * length + t, tl.sum(gy * states, axis=0), mask=tmask, sem="relaxed"
                )
            else:
                dC_sum = _with_column(dC_sum, offs_l, n, _column(dC_sum, offs_l, n) + tl.sum(gy * states, axis=1))
        du = dt * lam_B
        u = tl.load(u_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_D:  # skip is None only while HAS_D, a constexpr, is off
            du += skip[:, None] * gy  # type: ignore[index]
            y += skip[:, None] * u  # type: ignore[index]
            dD += tl.sum(gy * u, axis=1)
        ddt = u * lam_B + w_A
        if SOFTPLUS:
            x, _ = _delta(tl.load(dt_rows[:, None] + t[None, :], mask=mask, other=0.0), bias, HAS_BIAS, False, FAST_LOG)
            ddt *= _sigmoid(x)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias += tl.sum(ddt, axis=1)
        tl.store(du_rows[:, None] + t[None, :], du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddt_rows[:, None] + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        if HAS_Z:
            dout = tl.load(g_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
            z = tl.load(z_rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)
            z_sig = _sigmoid(z)
            dz = dout * y * z_sig * (1.0 + z * (1.0 - z_sig))
            tl.store(dz_rows[:, None] + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)

    _store_per_state(dA_ptr + state_rows, dA, offs_l, chan_mask, N)
    if not VARIABLE_B:
        _store_per_state(dB_ptr + state_rows, dB_sum, offs_l, chan_mask, N)
    if not VARIABLE_C:
        _store_per_state(dC_ptr + state_rows, dC_sum, offs_l, chan_mask, N)
    if HAS_D:
        tl.store(dD_ptr + batch * dim + chans, dD, mask=chan_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + batch * dim + chans, dbias, mask=chan_mask)
    if WANT_DH0:  # dL/dh_0 = a_0 lam_0, state n in column n
        dt0_raw = tl.load(dt_rows[:, None], mask=chan_mask[:, None], other=0.0)
        _, dt0 = _delta(dt0_raw, bias, HAS_BIAS, SOFTPLUS, FAST_LOG)
        a_all = tl.load(
            A_ptr + chans[:, None] * stride_A_d + offs_l[None, :] * stride_A_n,
            mask=chan_mask[:, None] & (offs_l < N)[None, :],
            other=0.0,
        ).to(tl.float32)
        _store_per_state(dh0_ptr + state_rows, tl.exp2(dt0 * a_all * LOG2E) * lam, offs_l, chan_mask, N)


def _bc_strides(BC: Tensor) -> tuple[int, int, int, int]:
    """(batch, group, channel, state) strides of B or C as the kernels index them; the step stride is 1.
    (batch, N, L) is one group; time-invariant (dim, N) is indexed by channel."""
    if BC.dim() == 2:
        return 0, 0, BC.stride(0), BC.stride(1)
    if BC.dim() == 3:
        return BC.stride(0), 0, 0, BC.stride(1)
    return BC.stride(0), BC.stride(1), 0, BC.stride(2)


def _last_axis_contiguous(x: Tensor) -> Tensor:
    """x, or a contiguous copy when its last axis (the time steps of the scan's inputs, the channels of a decode
    step's) has another stride than 1: the kernels read that axis with unit stride, any other strides will do."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _like_steps(x: Tensor) -> Tensor:
    """A new tensor shaped as x (batch, dim, L) with unit-stride steps, in x's layout when x is dense (the mixer's
    (dim, batch, L) activations), so that results and gradients meet their neighbours without copies."""
    new = torch.empty_like(x)
    return new if new.stride(-1) == 1 else torch.empty_like(x, memory_format=torch.contiguous_format)


def _bwd_tile_length(config: ScanConfig, d_state: int) -> int:
    """Steps per backward tile, also the forward's save interval: the backward's per-state carries are
    columns of a tile, so its tiles span at least N steps."""
    return max(config.bwd_block_l, triton.next_power_of_2(d_state))


def _forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    h0: Tensor | None,
    softplus: bool,
    config: ScanConfig,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel on prepared inputs: (out, last state, the states every backward tile starts from, empty
    unless `save`)."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    groups = channel_groups(B, C)
    bwd_block_l = _bwd_tile_length(config, d_state)
    out = _like_steps(u)
    # The kernel reads the initial state from here and writes the last state over it.
    last = (
        h0.float().clone(memory_format=torch.contiguous_format)
        if h0 is not None
        else (u.new_zeros(batch, dim, d_state, dtype=torch.float32))
    )
    saved = u.new_empty(batch, triton.cdiv(length, bwd_block_l) if save else 0, dim, d_state, dtype=torch.float32)
    grid = (triton.cdiv(dim // groups, config.fwd_block_d), groups, batch)
    _scan_fwd_kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        _or(D, u),
        _or(z, u),
        _or(delta_bias, u),
        out,
        last,
        saved,
        length,
        dim // groups,
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        *_bd_strides(z),
        out.stride(0),
        out.stride(1),
        A.stride(0),
        A.stride(1),
        *_bc_strides(B),
        *_bc_strides(C),
        N=d_state,
        NP=triton.next_power_of_2(d_state),
        BLOCK_D=config.fwd_block_d,
        BLOCK_L=config.fwd_block_l,
        SAVE_EVERY=bwd_block_l,
        VARIABLE_B=B.dim() > 2,
        VARIABLE_C=C.dim() > 2,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus,
        SAVE_STATES=save,
        FAST_LOG=_FAST_LOG,
        UNROLL=min(config.fwd_unroll, d_state),
        num_warps=config.fwd_warps,
    )
    return out, last, saved


def _backward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    h0: Tensor | None,
    saved: Tensor,
    softplus: bool,
    config: ScanConfig,
    dout: Tensor | None,
    dlast: Tensor | None,
    want_dh0: bool,
) -> tuple[Tensor | None, ...]:
    """The adjoint kernel on the forward's prepared inputs and saved states: (du, ddelta, dA, dB, dC, dD, dz,
    ddelta_bias, dh0), each in its input's dtype, None for an absent input."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    groups = channel_groups(B, C)
    if B.dim() > 2 or C.dim() > 2:
        alert_not_deterministic(
            "the triton backend's selective-scan backward (per-step dB, dC)",
            "use backend='cuda' (deterministic in this mode), 'torch' or 'auto'",
        )
    dout = torch.zeros_like(u) if dout is None else _last_axis_contiguous(dout)
    dlast = dlast.contiguous() if dlast is not None else None
    f32 = torch.float32
    du, ddelta = _like_steps(u), _like_steps(delta)
    dz = _like_steps(z) if z is not None else None
    # Per-step dB/dC are added over channel blocks with atomics; time-invariant ones, like dA, are
    # per-batch partial sums.
    dB, dC = (
        u.new_zeros((batch, groups, d_state, length), dtype=f32)
        if BC.dim() > 2
        else u.new_empty((batch, dim, d_state), dtype=f32)
        for BC in (B, C)
    )
    dA = u.new_empty(batch, dim, d_state, dtype=f32)
    dD = u.new_empty(batch, dim, dtype=f32) if D is not None else None
    dbias = u.new_empty(batch, dim, dtype=f32) if delta_bias is not None else None
    want_dh0 = h0 is not None and want_dh0
    dh0 = torch.empty_like(dA) if want_dh0 else None
    grid = (triton.cdiv(dim // groups, config.bwd_block_d), groups, batch)
    _scan_bwd_kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        _or(D, u),
        _or(z, u),
        _or(delta_bias, u),
        saved,
        dout,
        _or(dlast, dA),
        du,
        ddelta,
        _or(dz, u),
        dB,
        dC,
        dA,
        _or(dD, dA),
        _or(dbias, dA),
        _or(dh0, dA),
        length,
        dim // groups,
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        *_bd_strides(z),
        dout.stride(0),
        dout.stride(1),
        du.stride(0),
        du.stride(1),
        ddelta.stride(0),
        ddelta.stride(1),
        *_bd_strides(dz),
        A.stride(0),
        A.stride(1),
        *_bc_strides(B),
        *_bc_strides(C),
        N=d_state,
        BLOCK_D=config.bwd_block_d,
        BLOCK_L=_bwd_tile_length(config, d_state),
        VARIABLE_B=B.dim() > 2,
        VARIABLE_C=C.dim() > 2,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus,
        HAS_DLAST=dlast is not None,
        WANT_DH0=want_dh0,
        FAST_LOG=_FAST_LOG,
        UNROLL=min(config.bwd_unroll, d_state),
        num_warps=config.bwd_warps,
    )
    dB, dC = (grad if BC.dim() > 2 else grad.sum(0) for grad, BC in ((dB, B), (dC, C)))
    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        dB.view(B.shape).to(B.dtype),
        dC.view(C.shape).to(C.dtype),
        _summed(dD, D),
        dz,
        _summed(dbias, delta_bias),
        _cast(dh0, h0),
    )


def _summed(partial_sums: Tensor | None, like: Tensor | None) -> Tensor | None:
    """Per-batch partial sums of a per-channel parameter's gradient, summed, in the parameter's dtype."""
    return None if partial_sums is None or like is None else partial_sums.sum(0).to(like.dtype)


class _TritonScan(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, delta_bias, h0) -> (out, last state), with the adjoint as its backward."""

    @staticmethod
    def forward(
        ctx: Any,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        h0: Tensor | None,
        softplus: bool,
        config: ScanConfig,
    ) -> tuple[Tensor, Tensor]:
        save = any(ctx.needs_input_grad[:9])
        out, last, saved = _forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, config, save)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, saved)
            ctx.softplus, ctx.config = softplus, config
        return out, last

    @staticmethod
    def backward(ctx: Any, dout: Tensor | None, dlast: Tensor | None) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias, h0, saved = ctx.saved_tensors
        want_dh0 = ctx.needs_input_grad[8]
        grads = _backward(
            u, delta, A, B, C, D, z, delta_bias, h0, saved, ctx.softplus, ctx.config, dout, dlast, want_dh0
        )
        return (*grads, None, None)


def _or(x: Tensor | None, placeholder: Tensor) -> Tensor:
    """A tensor argument for a kernel input that is absent (its constexpr flag off): never read."""
    return placeholder if x is None else x


def _bd_strides(x: Tensor | None) -> tuple[int, int]:
    return (x.stride(0), x.stride(1)) if x is not None else (0, 0)


def selective_scan_triton(
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
    config: ScanConfig | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan on the GPU in Triton; same contract as `mambakit.ops.selective_scan` (arguments already
    checked), gradients for every input including `initial_state` and through the returned last state.

    u, delta, z may be fp32, bf16 or fp16; the state math is fp32. float64 inputs (and L = 0) go to the `torch`
    backend, which computes in float64. `config` picks tile shapes (default: tuned for the input dtype).
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.shape[-1] == 0 or any(t is not None and t.dtype == torch.float64 for t in tensors):
        from .torch_scan import selective_scan_torch

        return selective_scan_torch(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state
        )
    u, delta, B, C, z = _prepared(u, delta, B, C, z)
    config = config or default_config(u.shape[0], u.shape[1])
    out, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, config)
    return (out, last) if return_last_state else out


def _prepared(
    u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """u, delta, B, C, z as the kernels read them."""
    u, delta = _last_axis_contiguous(u), _last_axis_contiguous(delta)
    z = _last_axis_contiguous(z) if z is not None else None
    # Per-step B/C are re-read for every channel: fp32 copies (1/dim of u's size) save the kernels a conversion
    # per element; autograd casts their gradients back. B and C may differ in layout: one time-invariant (dim, N),
    # the other per step; each has its own constexpr flag in the kernels, so no layout is expanded into another.
    B, C = (_last_axis_contiguous(BC.float()) if BC.dim() > 2 else BC for BC in (B, C))
    return u, delta, B, C, z


def selective_scan_fwd_triton(
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
    (out, the tensors `selective_scan_bwd_triton` needs besides the inputs)."""
    u, delta, B, C, z = _prepared(u, delta, B, C, z)
    config = default_config(u.shape[0], u.shape[1])
    out, _, saved = _forward(u, delta, A, B, C, D, z, delta_bias, None, delta_softplus, config, save=True)
    return out, (saved,)


def selective_scan_bwd_triton(
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
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of `selective_scan_fwd_triton`'s output,
    from the same inputs and its residuals."""
    B_in, C_in = B, C
    u, delta, B, C, z = _prepared(u, delta, B, C, z)
    config = default_config(u.shape[0], u.shape[1])
    (saved,) = residuals
    grads = _backward(u, delta, A, B, C, D, z, delta_bias, None, saved, delta_softplus, config, dout, None, False)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, _ = grads
    return du, ddelta, dA, _cast(dB, B_in), _cast(dC, C_in), dD, dz, ddelta_bias


def _cast(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    return None if grad is None or like is None else grad.to(like.dtype)
