"""The `cuda` backend's selective scan: the forward and backward kernels of cuda/selective_scan.cu, compiled at
first use by NVRTC for the GPU at hand (mambakit.ops.nvrtc; no build step, no toolkit).

The forward saves the state at the start of every chunk of the backward kernel, which rebuilds each chunk from it.
Two backward kernels, chosen with `backward=`: "v2" (the default: several channels a warp, no shared-memory
atomics; see cuda/selective_scan.cu) and "v1" (a warp a channel), which the H100 measured 3-6x slower
(bench/results/gpu_notes.md). The cases the kernels do not take yet run on the Triton kernels: a time-invariant B
or C (either or both), float64, L = 0 and more than MAX_STATES states.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import nvrtc
from .reference import channel_groups

SOURCE_FILE = Path(__file__).parent / "cuda" / "selective_scan.cu"
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
#: Steps per lane: a chunk is 32 lanes x ITEMS steps; B and C of a chunk take 2 x N x 32 x ITEMS fp32 of shared memory.
ITEMS = 8
#: Channels (warps) per CTA, sharing the chunk's B and C.
CHANNELS = 4
#: The forward's tile: steps per lane (8, 16 or 32: its chunk must hold whole chunks of either backward, and a lane's
#: steps whole chunks of v2's) and states scanned at once (taken where it divides N, else 1). Within the 128
#: registers of its launch bounds, ptxas (NVRTC 13, sm_90) fits 8 x 1, 8 x 2 and 16 x 1 and spills 16 bytes at 8 x 4,
#: 200 at 16 x 2, 860 at 32 x 1.
FORWARD_ITEMS = 8
FORWARD_IN_FLIGHT = 1
#: Steps per lane where the forward's grid is small (at most SMALL_GRID_CTAS_PER_SM CTAs an SM, e.g. one long
#: sequence): 16 measured 2.14 against 8's 2.61 ms at B1 D1536 L65536 (384 CTAs), while 8 is faster when the GPU is
#: full (0.465 against 0.478 ms at B8 D1536 L2048, 1.267 against 1.513 at B8 D2048 L4096; H200, commit 0bc655b).
SMALL_GRID_FORWARD_ITEMS = 16
SMALL_GRID_CTAS_PER_SM = 4
#: The forward tiles (FORWARD_ITEMS, FORWARD_IN_FLIGHT) the tests compile and check and bench/gpu.py times.
FORWARD_TILES = ((8, 1), (8, 2), (8, 4), (16, 1))
MAX_STATES = 64
BACKWARDS = ("v1", "v2")
DEFAULT_BACKWARD = "v2"
#: The backward v2 without atomics (see `selective_scan_cuda`'s `deterministic`); a variant name inside the ops.
DETERMINISTIC = "v2-deterministic"
_VARIANTS = (*BACKWARDS, DETERMINISTIC)
#: Backward v2's (channels a warp, warps a CTA), most channels a CTA first: it takes the first whose channels do not
#: straddle two B/C groups and whose shared memory fits V2_SHARED_BUDGET (else the one of those that needs least).
V2_LAYOUTS = ((8, 4), (8, 2), (8, 1), (4, 1), (2, 1), (1, 1))
#: The fewest steps between the states a forward saves (backward v2's chunk with 8 channels a warp): where even
#: its shared memory does not fit a CTA of the GPU (64 states on a 99 KB sm_86), the scan runs on Triton.
MIN_SAVE_EVERY = 32 // max(lane_channels for lane_channels, _ in V2_LAYOUTS) * ITEMS
#: Shared memory a v2 CTA may take and still let 4 CTAs (16 warps, the registers' limit) share an SM.
V2_SHARED_BUDGET = 48 * 1024


@functools.cache
def source() -> str:
    """The kernel source, read once."""
    return SOURCE_FILE.read_text()


def kernel_name(
    dtype_code: int,
    states: int,
    items: int,
    channels: int,
    has_z: bool,
    has_D: bool,
    has_delta_bias: bool,
    softplus: bool,
    has_initial_state: bool,
    return_last_state: bool,
    save_chunk_states: bool = False,
    save_every: int | None = None,
    in_flight: int = 1,
) -> str:
    """The template instantiation of the forward kernel for one combination of settings; `save_every` is the steps
    between the states it saves for the backward (default: its own chunk, 32 x items); `in_flight` the states a
    warp scans at once (it must divide `states`)."""
    flags = (has_z, has_D, has_delta_bias, softplus, has_initial_state, return_last_state, save_chunk_states)
    save_every = save_every or 32 * items
    return _instantiation("selective_scan_fwd", dtype_code, states, items, channels, *flags, save_every, in_flight)


def _instantiation(kernel: str, *arguments: int | bool) -> str:
    return f"{kernel}<" + ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in arguments) + ">"


def backward_kernel_name(
    dtype_code: int,
    states: int,
    items: int,
    channels: int,
    has_z: bool,
    has_D: bool,
    has_delta_bias: bool,
    softplus: bool,
    has_initial_state: bool,
    has_last_state_grad: bool,
) -> str:
    """The template instantiation of the backward kernel v1 for one combination of settings."""
    flags = (has_z, has_D, has_delta_bias, softplus, has_initial_state, has_last_state_grad)
    return _instantiation("selective_scan_bwd", dtype_code, states, items, channels, *flags)


def backward_v2_kernel_name(
    dtype_code: int,
    states: int,
    items: int,
    layout: tuple[int, int],
    has_z: bool,
    has_D: bool,
    has_delta_bias: bool,
    softplus: bool,
    has_initial_state: bool,
    has_last_state_grad: bool,
    deterministic: bool = False,
) -> str:
    """The template instantiation of the backward kernel v2 for one combination of settings; `layout` is one of
    V2_LAYOUTS. `deterministic`: partial sums a CTA (and batch element) stored, for a fixed-order sum, instead of
    atomics."""
    flags = (has_z, has_D, has_delta_bias, softplus, has_initial_state, has_last_state_grad, deterministic)
    return _instantiation("selective_scan_bwd_v2", dtype_code, states, items, *layout, *flags)


def v2_chunk(layout: tuple[int, int]) -> int:
    """Steps in a chunk of backward v2: 32 / (channels a warp) lanes of ITEMS steps; the forward saves a state
    at the start of each."""
    return 32 // layout[0] * ITEMS


def v2_layout(dim: int, groups: int, states: int) -> tuple[int, int]:
    """Backward v2's layout for `dim` channels in `groups` B/C groups with `states` states (see V2_LAYOUTS)."""
    fitting = [c for c in V2_LAYOUTS if groups == 1 or (dim // groups) % (c[0] * c[1]) == 0]
    small = [c for c in fitting if backward_v2_shared_bytes(states, c) <= V2_SHARED_BUDGET]
    return small[0] if small else min(fitting, key=lambda c: backward_v2_shared_bytes(states, c))


#: A Mamba layer's scan flags: z, D, delta bias, softplus; no initial state.
LAYER_FLAGS = (True, True, True, True, False)


def _layer_forward(dtype_code: int, save_every: int) -> str:
    return kernel_name(dtype_code, 16, FORWARD_ITEMS, CHANNELS, *LAYER_FLAGS, True, True, save_every, FORWARD_IN_FLIGHT)


#: The forwards and backwards a Mamba layer runs in training (z, D, delta bias, softplus; no initial state) with
#: each backward kernel (v2 in its 16-state layout), by input dtype name.
LAYER_VARIANTS = {
    name: [
        _layer_forward(code, 32 * ITEMS),
        backward_kernel_name(code, 16, ITEMS, CHANNELS, *LAYER_FLAGS, False),
        _layer_forward(code, v2_chunk(V2_LAYOUTS[0])),
        backward_v2_kernel_name(code, 16, ITEMS, V2_LAYOUTS[0], *LAYER_FLAGS, False),
    ]
    for name, code in (("fp32", 0), ("bf16", 1), ("fp16", 2))
}


def compile_report(architecture: int) -> list[tuple[str, float | None, float]]:
    """For each of LAYER_VARIANTS on sm_`architecture`: (dtype, seconds of its first compile or None when it
    was already cached, seconds to read it back from the disk cache)."""
    rows = []
    for dtype, names in LAYER_VARIANTS.items():
        first = nvrtc.compile_kernels(source(), names, architecture)
        hit = nvrtc.compile_kernels(source(), names, architecture)
        rows.append((dtype, None if first.cached else first.seconds, hit.seconds))
    return rows


def _channels_per_cta(dim: int, groups: int) -> int:
    """CHANNELS, or fewer so that no CTA spans two B/C groups."""
    if groups == 1:
        return CHANNELS
    per_group = dim // groups
    return next(c for c in (CHANNELS, 2, 1) if per_group % c == 0)


def _falls_back(tensors: tuple[Tensor | None, ...], B: Tensor, C: Tensor, states: int, length: int) -> bool:
    # The kernels stage a chunk's per-step B and C in shared memory and have no time-invariant path; the Triton
    # kernels take each of B and C in its own layout, so a mixed call runs there rather than on a (batch, dim, N, L)
    # expansion of the time-invariant one (dim times the memory of a per-step B).
    return (
        B.dim() == 2
        or C.dim() == 2
        or length == 0
        or states > MAX_STATES
        or any(t is not None and t.dtype == torch.float64 for t in tensors)
        or (B.is_cuda and not forward_fits(states, B.device))
    )


def selective_scan_cuda(
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
    backward: str = DEFAULT_BACKWARD,
    deterministic: bool | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the NVRTC-compiled kernels; same contract as `mambakit.ops.selective_scan`
    (arguments already checked), gradients for every input and through the returned last state. `backward` picks
    the backward kernel, one of BACKWARDS. `deterministic` (None: torch.are_deterministic_algorithms_enabled()) runs
    backward v2 without atomics, so that every gradient is the same bit for bit from run to run: it stores partial
    sums (dB and dC of each CTA, dA, dD and d delta_bias of each batch element) that are then summed in
    a fixed order."""
    variant = _variant(backward, deterministic, A.shape[1], u.device)
    batch, dim, length = u.shape
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if _falls_back(tensors, B, C, A.shape[1], length):
        from .triton_scan import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state
        )
    inputs = _prepare(u, delta, A, B, C, D, z, delta_bias, initial_state)
    out, last, _ = _forward_op(*inputs, delta_softplus, variant)
    return (out, last) if return_last_state else out


class _Prepared(NamedTuple):
    """A scan's inputs as the kernels read them: unit-stride steps, B and C as fp32 (b, groups, N, L), the
    per-channel parameters fp32 and contiguous."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    delta_bias: Tensor | None
    initial_state: Tensor | None


def _prepare(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
) -> _Prepared:
    batch, dim, length = u.shape
    states, groups, dtype = A.shape[1], channel_groups(B, C), u.dtype
    return _Prepared(
        _unit_stride(u),
        _unit_stride(delta.to(dtype)),
        A.float().contiguous(),
        B.reshape(batch, groups, states, length).float().contiguous(),
        C.reshape(batch, groups, states, length).float().contiguous(),
        None if D is None else D.float().contiguous(),
        None if z is None else _unit_stride(z.to(dtype)),
        None if delta_bias is None else delta_bias.float().contiguous(),
        None if initial_state is None else initial_state.float().contiguous(),
    )


def _variant(backward: str, deterministic: bool | None, states: int = 16, device: torch.device | None = None) -> str:
    """The backward kernel to run: `backward`, or DETERMINISTIC when `deterministic` (None: when torch's
    deterministic algorithms are on); v2 for v1 where v1's shared memory at `states` states does not fit a CTA of
    `device` (64 states need 290 KB; the same gradients)."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        return DETERMINISTIC
    if backward == "v1" and device is not None and device.type == "cuda":
        return "v2" if backward_shared_bytes(states, CHANNELS) > shared_limit(device) else "v1"
    return backward


def _save_every(dim: int, groups: int, states: int, backward: str) -> int:
    """Steps between the states the forward saves: a chunk of the `backward` kernel."""
    return 32 * ITEMS if backward == "v1" else v2_chunk(v2_layout(dim, groups, states))


def _forward_outputs(u: Tensor, A: Tensor, B: Tensor, backward: str) -> tuple[Tensor, Tensor, Tensor]:
    """New (out, last state, chunk states) for the forward kernel to write."""
    batch, dim, length = u.shape
    states = A.shape[1]
    chunks = -(-length // _save_every(dim, B.shape[1], states, backward))
    f32 = torch.float32
    return (
        torch.empty_like(u),  # in u's layout: the fused mixer's (channels, batch * L) columns stay views
        u.new_empty(batch, dim, states, dtype=f32),
        u.new_empty(batch, dim, chunks, states, dtype=f32),
    )


def _sizes_and_strides(inputs: _Prepared, out_or_dout: Tensor) -> list[ctypes._SimpleCData]:
    """The kernels' arguments after their pointers: dim, L, channels per group, the (batch, channel) strides of u,
    delta, z and `out_or_dout`, and B's (batch, group) strides (C's are the same)."""
    u, delta, _, B, _, _, z, _, _ = inputs
    dim, length = u.shape[1], u.shape[2]
    return [
        ctypes.c_int(dim),
        ctypes.c_int(length),
        ctypes.c_int(dim // B.shape[1]),
        *_strides(u, delta, z if z is not None else u, out_or_dout),
        ctypes.c_int64(B.stride(0)),
        ctypes.c_int64(B.stride(1)),
    ]


def _launch_forward(inputs: _Prepared, softplus: bool, backward: str) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel: (out, last state, the states the `backward` kernel's chunks start from)."""
    u, delta, A, B, C, D, z, delta_bias, initial_state = inputs
    batch, dim, _ = u.shape
    states, groups = A.shape[1], B.shape[1]
    out, last, chunk_states = _forward_outputs(u, A, B, backward)
    save_every = _save_every(dim, groups, states, backward)
    channels = _channels_per_cta(dim, groups)
    grid = ((dim + channels - 1) // channels, batch, 1)
    items = forward_items(
        grid[0] * batch, _index(u.device), lambda items: forward_shared_bytes(states, channels, save_every, items)
    )
    flags = (z is not None, D is not None, delta_bias is not None, softplus, initial_state is not None)
    in_flight = FORWARD_IN_FLIGHT if states % FORWARD_IN_FLIGHT == 0 else 1
    name = kernel_name(DTYPE_CODES[u.dtype], states, items, channels, *flags, True, True, save_every, in_flight)
    pointers = (u, delta, A, B, C, D, z, delta_bias, initial_state, out, last, chunk_states)
    arguments = [*map(pointer, pointers), *_sizes_and_strides(inputs, out)]
    shared_bytes = forward_shared_bytes(states, channels, save_every, items)
    _kernel(name, _index(u.device))(grid, (32 * channels, 1, 1), arguments, shared_bytes)
    return out, last, chunk_states


def _launch_backward(
    inputs: _Prepared,
    chunk_states: Tensor,
    softplus: bool,
    backward: str,
    dout: Tensor | None,
    dlast: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """The `backward` kernel: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial) in the kernels' layouts, fp32
    but for du, ddelta and dz; None for an absent input. In segments where `segments_for` says."""
    segments = segments_for(inputs, backward)
    if segments > 1:
        return segmented_backward(inputs, chunk_states, softplus, backward, dout, dlast, segments, _backward_kernel)
    return _backward_kernel(inputs, chunk_states, softplus, backward, dout, dlast)


def _backward_kernel(
    inputs: _Prepared,
    chunk_states: Tensor,
    softplus: bool,
    backward: str,
    dout: Tensor | None,
    dlast: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """One launch of the `backward` kernel over the whole sequence."""
    u, delta, A, B, C, D, z, delta_bias, initial_state = inputs
    batch, dim, length = u.shape
    states, groups, dtype = A.shape[1], B.shape[1], u.dtype
    dout = torch.zeros_like(u) if dout is None else _unit_stride(dout.to(dtype))
    dlast = None if dlast is None else dlast.float().contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(u)  # u's layout, as the forward's output
    dz = torch.empty_like(u) if z is not None else None
    dinitial = torch.empty_like(initial_state) if initial_state is not None else None
    has = (z is not None, D is not None, delta_bias is not None)
    flags = (*has, softplus, initial_state is not None, dlast is not None)
    deterministic = backward == DETERMINISTIC
    if backward == "v1":  # a warp per channel
        channels = warps = _channels_per_cta(dim, groups)
        name = backward_kernel_name(DTYPE_CODES[dtype], states, ITEMS, channels, *flags)
        shared_bytes = backward_shared_bytes(states, channels)
    else:
        layout = v2_layout(dim, groups, states)
        name = backward_v2_kernel_name(DTYPE_CODES[dtype], states, ITEMS, layout, *flags, deterministic)
        lane_channels, warps = layout
        channels, shared_bytes = lane_channels * warps, backward_v2_shared_bytes(states, layout)
    # Deterministic, the kernel stores partial sums instead of adding with atomics: dB and dC of each CTA, dA, dD
    # and d delta_bias of each batch element; they are summed below, in a fixed order.
    per_batch = (batch,) if deterministic else ()
    per_cta = (batch, groups, -(-(dim // groups) // channels)) if deterministic else (batch, groups)
    dA = A.new_zeros(*per_batch, dim, states)
    dB, dC = (BC.new_zeros(*per_cta, states, length) for BC in (B, C))
    dD = D.new_zeros(*per_batch, dim) if D is not None else None
    ddelta_bias = delta_bias.new_zeros(*per_batch, dim) if delta_bias is not None else None
    pointers = (u, delta, A, B, C, D, z, delta_bias, chunk_states, dout, dlast, du, ddelta, dA, dB, dC, dD, dz)
    arguments = [*map(pointer, (*pointers, ddelta_bias, dinitial)), *_sizes_and_strides(inputs, dout), *_strides(du)]
    grid = ((dim + channels - 1) // channels, batch, 1)
    _kernel(name, _index(u.device))(grid, (32 * warps, 1, 1), arguments, shared_bytes)
    if backward == DETERMINISTIC:
        dB, dC, dA = dB.sum(2), dC.sum(2), dA.sum(0)
        dD, ddelta_bias = (None if t is None else t.sum(0) for t in (dD, ddelta_bias))
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial


# Long sequences of few channels (one batch element, B x D well below what fills the GPU, e.g. B1 D1536 L65536) leave
# most SMs idle in the backward: backward v2 puts 32 channels in a CTA, so B1 D1536 is 48 CTAs for 132 SMs. There
# the backward runs with the sequence cut into S equal segments, seen by the kernel as S batch elements of one S-th
# of the length (a strided view: no copy of u, delta, z or dout), in three phases: (1) each segment's backward with
# no gradient after it gives the gradient of the state entering it; (2) right to left, the gradient after each
# segment: dlast[s] = dinit_zero[s+1] + exp(A * sum delta of segment s+1) * dlast[s+1]; (3) each segment's backward
# with that gradient gives every gradient. The states entering the segments are among those the forward saved.
# The forward stays one pass: its three-phase version (each segment's last state from a zero start, then the
# entering states, then the outputs) measured 6.53 ms against one pass's 3.65 ms at B1 D1536 L65536 on an H100
# (its 4 channels a CTA already give 384 CTAs); the backward went from 24.6 to 11.1 ms.
#: Whether the backward of one long sequence runs in segments where segments_for says.
SEGMENTED_BACKWARD = True
#: Channel-segments that fill the GPU (B8 D1536 runs near the kernels' best), the shortest segment worth its
#: phases, and the most segments.
SEGMENT_CHANNELS = 12288
MIN_SEGMENT = 4096
MAX_SEGMENTS = 64


def segments_for(inputs: _Prepared, backward: str) -> int:
    """Segments to run a call's backward in: 1 (one pass) unless SEGMENTED_BACKWARD is on, batch is 1 and dim is
    small; a power of two whose segments are whole chunks of the `backward` kernel."""
    batch, dim, length = inputs.u.shape
    if batch != 1 or not SEGMENTED_BACKWARD:
        return 1
    save_every = _save_every(dim, inputs.B.shape[1], inputs.A.shape[1], backward)
    segments = min(SEGMENT_CHANNELS // max(dim, 1), length // MIN_SEGMENT, MAX_SEGMENTS)
    segments = 1 << max(segments, 1).bit_length() - 1
    align = max(32 * ITEMS, save_every)
    while segments > 1 and length % (segments * align):
        segments //= 2
    return segments


def _segment_view(t: Tensor, segments: int) -> Tensor:
    """(1, D, L) with unit stride in L -> (S, D, L / S), the same memory."""
    _, dim, length = t.shape
    return t.as_strided((segments, dim, length // segments), (length // segments, t.stride(1), 1))


def _joined(t: Tensor) -> Tensor:
    """(S, ..., L / S) -> (1, ..., L): the segments back in one sequence."""
    segments, *middle, length = t.shape
    return t.movedim(0, -2).reshape(1, *middle, segments * length)


def _segmented_inputs(inputs: _Prepared, segments: int, initial_state: Tensor | None) -> _Prepared:
    u, delta, A, B, C, D, z, delta_bias, _ = inputs
    groups, states, length = B.shape[1], B.shape[2], B.shape[3]
    split = (groups, states, segments, length // segments)
    B, C = (t.reshape(split).movedim(2, 0).contiguous() for t in (B, C))
    z = None if z is None else _segment_view(z, segments)
    return _Prepared(
        _segment_view(u, segments), _segment_view(delta, segments), A, B, C, D, z, delta_bias, initial_state
    )


def _segment_decays(inputs: _Prepared, softplus: bool, segments: int) -> Tensor:
    """(S, D, N): exp(A * the sum of each segment's delta), the factor a segment applies to the state entering it."""
    delta = inputs.delta[0].to(inputs.A.dtype)  # fp32, as the kernels compute
    if inputs.delta_bias is not None:
        delta = delta + inputs.delta_bias[:, None]
    if softplus:
        delta = torch.nn.functional.softplus(delta)
    sums = delta.reshape(delta.shape[0], segments, -1).sum(-1).t()
    return torch.exp(sums[..., None] * inputs.A)


def segmented_backward(
    inputs: _Prepared,
    chunk_states: Tensor,
    softplus: bool,
    backward: str,
    dout: Tensor | None,
    dlast: Tensor | None,
    segments: int,
    launch: Any,
) -> tuple[Tensor | None, ...]:
    """The backward in `segments` segments (see above), each phase one `launch` (a backward kernel's signature), from
    the states the forward saved (its whole sequence's `chunk_states`)."""
    _, dim, chunks, states = chunk_states.shape
    per_segment = chunk_states[0].reshape(dim, segments, chunks // segments, states).movedim(1, 0).contiguous()
    parts = _segmented_inputs(inputs, segments, per_segment[:, :, 0].contiguous())
    dout = None if dout is None else _segment_view(_unit_stride(dout.to(inputs.u.dtype)), segments)
    dinitial_zero = launch(parts, per_segment, softplus, backward, dout, None)[-1]
    decays = _segment_decays(inputs, softplus, segments)
    after = [dlast[0].to(dinitial_zero.dtype) if dlast is not None else torch.zeros_like(dinitial_zero[0])]
    for segment in range(segments - 2, -1, -1):
        after.append(dinitial_zero[segment + 1] + decays[segment + 1] * after[-1])
    grads = launch(parts, per_segment, softplus, backward, dout, torch.stack(after[::-1]))
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial = grads
    joined = (None if t is None else _joined(t) for t in (du, ddelta, dB, dC, dz))
    du, ddelta, dB, dC, dz = joined
    dinitial = None if inputs.initial_state is None else dinitial[:1]
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial


# The kernels as custom ops: torch.compile and make_fx see each launch as one opaque node (the fake
# implementations give it the outputs' shapes), and autograd reaches the user's tensors through the preparing ops
# (casts, reshapes) that `_prepare` runs outside them.
_PREPARED = "Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
_PREPARED += "Tensor? initial_state"


@torch.library.custom_op(
    "mambakit::cuda_scan_fwd",
    mutates_args=(),
    device_types="cuda",
    schema=f"({_PREPARED}, bool softplus, str backward) -> (Tensor, Tensor, Tensor)",
)
def _forward_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
    softplus: bool,
    backward: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _launch_forward(_Prepared(u, delta, A, B, C, D, z, delta_bias, initial_state), softplus, backward)


@_forward_op.register_fake
def _forward_fake(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, *rest: Any
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward_outputs(u, A, B, rest[-1])


@torch.library.custom_op(
    "mambakit::cuda_scan_bwd",
    mutates_args=(),
    device_types="cuda",
    schema=f"({_PREPARED}, Tensor chunk_states, Tensor? dout, Tensor? dlast, bool softplus, str backward) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _backward_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
    chunk_states: Tensor,
    dout: Tensor | None,
    dlast: Tensor | None,
    softplus: bool,
    backward: str,
) -> tuple[Tensor, ...]:
    inputs = _Prepared(u, delta, A, B, C, D, z, delta_bias, initial_state)
    grads = _launch_backward(inputs, chunk_states, softplus, backward, dout, dlast)
    # A custom op returns tensors only: an absent input's gradient comes back empty.
    return tuple(u.new_empty(0) if grad is None else grad for grad in grads)


@_backward_op.register_fake
def _backward_fake(*arguments: Any) -> tuple[Tensor, ...]:
    inputs = _Prepared(*arguments[:9])
    dz_like = None if inputs.z is None else inputs.u  # du, ddelta and dz come in u's layout
    like = (inputs.u, inputs.u, *inputs[2:5], inputs.D, dz_like, inputs.delta_bias, inputs.initial_state)
    return tuple(inputs.u.new_empty(0) if t is None else torch.empty_like(t) for t in like)


def _save_for_backward(ctx: Any, inputs: tuple, output: tuple) -> None:
    *prepared, softplus, backward = inputs
    ctx.softplus, ctx.backward = softplus, backward
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the kernel skips it
    ctx.save_for_backward(*prepared, output[2])


def _forward_op_backward(ctx: Any, dout: Tensor | None, dlast: Tensor | None, _: Tensor | None) -> tuple:
    *prepared, chunk_states = ctx.saved_tensors
    grads = _backward_op(*prepared, chunk_states, dout, dlast, ctx.softplus, ctx.backward)
    return (*(None if t is None else grad for t, grad in zip(prepared, grads, strict=True)), None, None)


_forward_op.register_autograd(_forward_op_backward, setup_context=_save_for_backward)


def selective_scan_fwd_cuda(
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
    (out, the chunk states `selective_scan_bwd_cuda` needs besides the inputs). Cases the kernels do not take
    run on the Triton kernels' forward."""
    if _falls_back((u, delta, A, B, C, D, z, delta_bias), B, C, A.shape[1], u.shape[-1]):
        from .triton_scan import selective_scan_fwd_triton

        return selective_scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    variant = _variant(DEFAULT_BACKWARD, None)
    out, _, chunk_states = _forward_op(*_prepare(u, delta, A, B, C, D, z, delta_bias, None), delta_softplus, variant)
    # Which backward the saved states are for: torch's deterministic setting may change before the backward runs.
    return out, (chunk_states, torch.tensor(_VARIANTS.index(variant)))


def selective_scan_bwd_cuda(
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
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of `selective_scan_fwd_cuda`'s output, from
    the same inputs and its residuals."""
    if _falls_back((u, delta, A, B, C, D, z, delta_bias), B, C, A.shape[1], u.shape[-1]):
        from .triton_scan import selective_scan_bwd_triton

        return selective_scan_bwd_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dout)
    inputs = _prepare(u, delta, A, B, C, D, z, delta_bias, None)
    chunk_states, variant = residuals
    grads = _backward_op(*inputs, chunk_states, dout, None, delta_softplus, _VARIANTS[int(variant)])
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, _ = grads
    restored = (grad.reshape(t.shape).to(t.dtype) for grad, t in ((dA, A), (dB, B), (dC, C)))
    return (
        du,
        ddelta,
        *restored,
        *(None if t is None else g for t, g in ((D, dD), (z, dz), (delta_bias, ddelta_bias))),
    )


def forward_items(ctas: int, device_index: int, shared_bytes: Callable[[int], int]) -> int:
    """The forward's steps per lane for a grid of `ctas` CTAs on GPU `device_index`, whose CTAs need
    `shared_bytes(steps per lane)` of shared memory: SMALL_GRID_FORWARD_ITEMS for a small grid where that fits
    (at 64 states it would need 280 KB), else FORWARD_ITEMS."""
    multiprocessors = torch.cuda.get_device_properties(device_index).multi_processor_count
    small = ctas <= SMALL_GRID_CTAS_PER_SM * multiprocessors
    fits = shared_bytes(SMALL_GRID_FORWARD_ITEMS) <= shared_limit(torch.device("cuda", device_index))
    return SMALL_GRID_FORWARD_ITEMS if small and fits else FORWARD_ITEMS


def forward_fits(states: int, device: torch.device) -> bool:
    """Whether the forward's smallest tile at `states` states fits the shared memory of a CTA on `device`."""
    return forward_shared_bytes(states, CHANNELS, MIN_SAVE_EVERY, FORWARD_ITEMS) <= shared_limit(device)


def shared_limit(device: torch.device) -> int:
    """The most shared memory a CTA may have on `device` (its opt-in limit: 227 KB on sm_90, 99 KB on sm_86)."""
    return _shared_limit(_index(device))


@functools.cache
def _shared_limit(device_index: int) -> int:
    properties = torch.cuda.get_device_properties(device_index)
    return int(getattr(properties, "shared_memory_per_block_optin", 0) or properties.shared_memory_per_block)


def forward_shared_bytes(states: int, channels: int, save_every: int, items: int) -> int:
    """The forward's shared memory at `items` steps a lane: the chunk's B and C, and each warp's A, carried states
    and, where the backward's chunk (`save_every` steps) is shorter than the forward's, the chunk's saved states (rows
    padded by one) and the row the lanes that save nothing store to."""
    chunk = 32 * items
    save_rows = chunk // save_every + 1 if save_every < chunk else 0
    return 4 * (2 * states * chunk + channels * (2 * states + save_rows * (states + 1)))


def backward_shared_bytes(states: int, channels: int) -> int:
    """The backward's: the chunk's B, C, dB and dC, and each warp's A, carried adjoints and lanes' dA sums."""
    return 4 * (4 * states * 32 * ITEMS + 34 * channels * states)


def backward_v2_shared_bytes(states: int, layout: tuple[int, int]) -> int:
    """Backward v2's: the chunk's B and C, each warp's dB and dC sums (with more than one warp), A, start states and
    carried adjoints of each channel (rows padded by one), and each lane's dA sums."""
    lane_channels, warps = layout
    chunk = v2_chunk(layout)
    slices = 2 * warps * states * chunk if warps > 1 else 0
    return 4 * (2 * states * chunk + slices + 3 * states * (lane_channels * warps + 1) + 32 * warps * states)


def _strides(*tensors: Tensor) -> list[ctypes.c_int64]:
    """Batch and dim strides of each (batch, dim, L) tensor, as kernel arguments."""
    return [ctypes.c_int64(stride) for t in tensors for stride in t.stride()[:2]]


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def pointer(t: Tensor | None) -> ctypes.c_void_p:
    """A tensor's device address as a kernel argument (NULL for an absent optional one)."""
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def _unit_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.cache
def _kernel(name: str, device_index: int) -> nvrtc.Kernel:
    """The kernel instantiation `name` on one GPU: compiled (or read from the disk cache) and loaded once."""
    major, minor = torch.cuda.get_device_capability(device_index)
    compiled = nvrtc.compile_kernels(source(), [name], 10 * major + minor)
    return nvrtc.load_kernel(compiled, name, torch.device("cuda", device_index))
