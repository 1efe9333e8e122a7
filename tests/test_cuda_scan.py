"""The `cuda` backend (CUDA C++ compiled at run time by NVRTC).

Without a GPU: every variant of the forward kernel and of both backward kernels (v1, v2) compiles to a cubin for
sm_80 and sm_90, the disk cache hits, and ptxas keeps the training variants out of local memory; emulations of
the kernels' exact decompositions equal the float64 reference: the forward's (per-lane items from a zero state,
the lanes' shuffle scan, the chunk carry, the decay as one exp of the summed steps, the states it saves for the
backward) and each backward's in each of its layouts (the chunk rebuilt from the saved state, the adjoint's
reverse passes and suffix scan, dB and dC summed over channels as the kernel sums them); the kernels are custom
ops that trace on meta tensors. With a GPU (`gpu` marker): the kernels, with each backward, against the float64
reference over the Triton test matrix, in a CUDA graph and under torch.compile."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mambakit.ops.reference import selective_scan_ref
from mambakit.ops.timing import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from scan_cases import CASES, scan_inputs

nvrtc = pytest.importorskip("mambakit.ops.nvrtc")
cuda_scan = pytest.importorskip("mambakit.ops.cuda_scan")


def _nvrtc_missing() -> str | None:
    try:
        nvrtc.nvrtc_version()
    except Exception as error:
        return f"NVRTC cannot be loaded here: {error}"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_missing() is not None, reason=str(_nvrtc_missing()))
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def every_kernel_variant() -> list[str]:
    """Each flag on and off (from all on), in each dtype, and the size extremes: every code path of the forward and
    both backwards; backward v2 in every layout, also deterministic, and the forward saving states for each."""
    items, channels, on = cuda_scan.ITEMS, cuda_scan.CHANNELS, [True] * 7
    kernels = (
        (7, cuda_scan.kernel_name, channels),
        (6, cuda_scan.backward_kernel_name, channels),
        (6, cuda_scan.backward_v2_kernel_name, cuda_scan.V2_LAYOUTS[0]),
    )
    names = []
    for dtype in cuda_scan.DTYPE_CODES.values():
        for count, kernel, layout in kernels:
            settings = [[True] * count] + [[j != off for j in range(count)] for off in range(count)]
            names += [kernel(dtype, 16, items, layout, *flags) for flags in settings]
            names += [kernel(dtype, states, items, c, *on[:count]) for states, c in ((1, 1), (64, 2)) if count == 7]
        names += [cuda_scan.backward_kernel_name(dtype, states, items, c, *on[:6]) for states, c in ((1, 1), (64, 2))]
        for layout in cuda_scan.V2_LAYOUTS:
            names += [cuda_scan.backward_v2_kernel_name(dtype, states, items, layout, *on[:6]) for states in (1, 64)]
            names += [
                cuda_scan.backward_v2_kernel_name(dtype, 16, items, layout, *flags, deterministic=True)
                for flags in (on[:6], (True, True, True, True, False, False))
            ]
            names.append(cuda_scan.kernel_name(dtype, 16, items, channels, *on, save_every=cuda_scan.v2_chunk(layout)))
    for forward_items, in_flight in cuda_scan.FORWARD_TILES:  # for either backward
        for save_every in (32 * items, cuda_scan.v2_chunk(cuda_scan.V2_LAYOUTS[0])):
            names.append(cuda_scan.kernel_name(1, 16, forward_items, channels, *on, save_every, in_flight))
    return list(dict.fromkeys(names))


@needs_nvrtc
# sm_90 only: the source differs between architectures in one launch bound, and the sm_80 build of the kernels a
# layer trains with is compiled by the register test below; every variant on both would cost CI half a minute more.
@pytest.mark.parametrize("architecture", [90])
def test_every_kernel_variant_compiles_without_a_gpu(architecture, tmp_path, monkeypatch):
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    # In two programs on two threads: NVRTC compiles without the GIL, so CI's two cores halve the time.
    names = every_kernel_variant()
    halves = [names[0::2], names[1::2]]
    with ThreadPoolExecutor(2) as pool:
        programs = list(pool.map(lambda half: nvrtc.compile_kernels(cuda_scan.source(), half, architecture), halves))
    for half, compiled in zip(halves, programs, strict=True):
        assert not compiled.cached and compiled.cubin[:4] == b"\x7fELF"
        assert set(compiled.lowered) == set(half) and all(m.startswith("_Z") for m in compiled.lowered.values())
        again = nvrtc.compile_kernels(cuda_scan.source(), half, architecture)
        assert again.cached and again.cubin == compiled.cubin and again.lowered == compiled.lowered


@needs_nvrtc
@pytest.mark.parametrize("architecture", [80, 90])
def test_the_training_kernels_keep_every_value_in_registers(architecture):
    # What a Mamba layer runs in training, in each dtype and with each backward (v2 in every layout, bf16): a spill
    # to local memory would cost far more than the registers it saves. v2's occupancy target (16 warps an SM on
    # sm_90, 12 on sm_80) is what keeps it out of local memory; v1 takes 145 registers.
    names = [name for variants in cuda_scan.LAYER_VARIANTS.values() for name in variants]
    flags = (True, True, True, True, False, False)
    names += [
        cuda_scan.backward_v2_kernel_name(1, 16, cuda_scan.ITEMS, layout, *flags) for layout in cuda_scan.V2_LAYOUTS
    ]
    usage = nvrtc.ptxas_usage(cuda_scan.source(), names, architecture)
    assert set(usage) == set(names)
    in_memory = {name: kernel for name, kernel in usage.items() if kernel.stack_bytes or kernel.spill_bytes}
    assert not in_memory, in_memory
    v2_limit = 128 if architecture >= 90 else 168
    assert all(kernel.registers <= v2_limit for name, kernel in usage.items() if "bwd_v2" in name), usage


@needs_nvrtc
def test_compiling_leaves_pythons_shared_bytes_alone(tmp_path, monkeypatch):
    """NVRTC writes its (here empty, 1-byte) log into the buffer it is given; a `b" " * size` buffer of size 1 is
    CPython's shared b" ", which then read b"\\x00" everywhere (torch.load among the victims)."""
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    nvrtc.compile_kernels("__global__ void k() {}", ["k"], 90)
    nvrtc.ptxas_usage("__global__ void k() {}", ["k"], 90)
    assert b" ".hex() == "20"  # read at run time: `b" "[0]` is folded when compiled, `bytes([32])` is b" " itself


@needs_nvrtc
def test_a_compile_error_is_raised_with_nvrtcs_log(tmp_path, monkeypatch):
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    with pytest.raises(nvrtc.NvrtcError, match="undefined"):
        nvrtc.compile_kernels("__global__ void k() { undefined_call(); }", ["k"], 90)


def lane_scan(decay, h):
    """The lanes' inclusive Kogge-Stone scan of (decay, state) pairs over the last axis (a group of lanes), as the
    shuffles do it (entering_state)."""
    F = torch.nn.functional
    lanes, offset = h.shape[-1], 1
    while offset < lanes:
        h_before = F.pad(h, (offset, 0))[..., :lanes]
        decay_before = F.pad(decay, (offset, 0), value=1.0)[..., :lanes]
        h, decay = decay * h_before + h, decay * decay_before
        offset *= 2
    return decay, h


def entering(decay, h, carry):
    """The state entering each lane, from the inclusive scan and the state before the group (carry: one per group)."""
    F = torch.nn.functional
    lanes = h.shape[-1]
    return F.pad(decay, (1, 0), value=1.0)[..., :lanes] * carry[..., None] + F.pad(h, (1, 0))[..., :lanes]


def emulate_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, items: int = 4, save_every: int | None = None):
    """The forward kernel's arithmetic in float64: chunks of 32 lanes x `items` steps; per state, pass 1 from a
    zero state per lane, an inclusive Kogge-Stone scan of (decay, state) over the lanes (as the shuffles do it),
    the state entering each lane from the chunk's carry, pass 2 with the outputs. Steps past the end get delta 0.
    Also returns the states it saves for the backward, (batch, dim, saves, N): the state entering each lane whose
    first step is a multiple of `save_every` (default: the chunk)."""
    batch, dim, length = u.shape
    states = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.reshape(batch, groups, states, length).repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    C = C.reshape(batch, groups, states, length).repeat_interleave(dim // groups, dim=1)
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    chunk = 32 * items
    save_every = save_every or chunk
    padded = math.ceil(length / chunk) * chunk
    pad = padded - length

    def lanes(t):  # (..., l) -> (..., chunks, 32 lanes, items)
        return torch.nn.functional.pad(t, (0, pad)).reshape(*t.shape[:-1], padded // chunk, 32, items)

    dt, dtu = lanes(delta), lanes(delta * u)
    B, C = lanes(B), lanes(C)
    y = torch.zeros_like(dt)
    carry = initial_state.clone()  # (b, d, n)
    last = torch.empty_like(carry)
    saved = torch.full((batch, dim, math.ceil(length / save_every), states), math.nan, dtype=u.dtype)
    for n in range(states):
        h_carry = carry[..., n]
        for c in range(padded // chunk):
            a = torch.exp(dt[:, :, c] * A[:, n, None, None])  # (b, d, 32, items)
            b = dtu[:, :, c] * B[:, :, n, c]
            h = torch.zeros_like(a[..., 0])
            for i in range(items):
                h = a[..., i] * h + b[..., i]
            decay, h = lane_scan(torch.exp(dt[:, :, c].sum(-1) * A[:, n, None]), h)
            state = entering(decay, h, h_carry)
            h_carry = decay[..., 31] * h_carry + h[..., 31]
            for lane in range(32):
                first = c * chunk + lane * items
                if first % save_every == 0 and first < length:
                    saved[:, :, first // save_every, n] = state[..., lane]
            for i in range(items):
                state = a[..., i] * state + b[..., i]
                y[:, :, c, :, i] += C[:, :, n, c, :, i] * state
        last[..., n] = h_carry
    y = y.reshape(batch, dim, padded)[..., :length] + D[:, None] * u
    return y * torch.nn.functional.silu(z), last, saved


def reference_states(u, delta, A, B, C, delta_bias, initial_state, every: int):
    """The float64 reference's state before every `every`-th step, (batch, dim, ceil(L / every), N)."""
    batch, dim, length = u.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.reshape(batch, groups, A.shape[1], length).repeat_interleave(dim // groups, dim=1)
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    saved, h = [], initial_state.clone()
    for t in range(length):
        if t % every == 0:
            saved.append(h.clone())
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[..., t]
    return torch.stack(saved, dim=2)


def with_every_option(inputs, dim):
    """The case's inputs with D, delta_bias and z filled in where the case leaves them out (0, 0 and a gate of 1)."""
    for name in ("D", "delta_bias"):
        if inputs.get(name) is None:
            inputs[name] = torch.zeros(dim, dtype=torch.float64)
    if inputs.get("z") is None:
        inputs["z"] = torch.full_like(inputs["u"], 30.0)
    return inputs


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:], ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
@pytest.mark.parametrize("items", [1, 4])
def test_the_kernels_decomposition_equals_the_float64_reference(case, items):
    batch, dim, d_state, length, layout, options = case
    inputs = with_every_option(
        scan_inputs(batch, dim, d_state, length, layout, seed=length, **{**options, "initial": True}), dim
    )
    expected, expected_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    # Saved every 8 steps, so that with 4 items per lane saves come from lanes inside a chunk too (backward v2).
    out, last, saved = emulate_forward(**inputs, items=items, save_every=8)
    assert relative_error(out, expected) < 1e-12
    assert relative_error(last, expected_last) < 1e-12
    names = ("u", "delta", "A", "B", "C", "delta_bias", "initial_state")
    assert relative_error(saved, reference_states(**{k: inputs[k] for k in names}, every=8)) < 1e-12


TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
GPU_CASES = [
    *[case for case in CASES if case[4] != "time_invariant"],
    (2, 100, 16, 1000, "shared", {}),
    (1, 96, 16, 2049, "grouped:4", {}),
    (1, 6, 16, 9000, "shared", {}),
    # Backward v2's other layouts (cuda_scan.v2_layout): 16 channels a group take (8, 2), 3 take (1, 1).
    (1, 32, 16, 300, "grouped:2", {}),
    (2, 9, 16, 700, "grouped:3", {}),
    # The most states (MAX_STATES) on a small grid, whose longer lanes would need 280 KB of shared memory a CTA.
    (1, 8, 64, 600, "shared", {}),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backward", cuda_scan.BACKWARDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
def test_cuda_matches_float64_reference_with_every_gradient(case, dtype, backward):
    from test_triton import cast_inputs, errors_vs_reference

    batch, dim, d_state, length, layout, options = case
    inputs = cast_inputs(scan_inputs(batch, dim, d_state, length, layout, device="cuda", seed=length, **options), dtype)
    scan = functools.partial(cuda_scan.selective_scan_cuda, backward=backward)
    errors = errors_vs_reference(scan, inputs, seed=dim)
    bad = {k: v for k, v in errors.items() if not v < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", cuda_scan.FORWARD_TILES, ids=str)
@pytest.mark.parametrize("backward", cuda_scan.BACKWARDS)
def test_every_forward_tile_matches_float64_reference(tile, backward, monkeypatch):
    from test_triton import cast_inputs, errors_vs_reference

    monkeypatch.setattr(cuda_scan, "FORWARD_ITEMS", tile[0])
    monkeypatch.setattr(cuda_scan, "SMALL_GRID_FORWARD_ITEMS", tile[0])
    monkeypatch.setattr(cuda_scan, "FORWARD_IN_FLIGHT", tile[1])
    for batch, dim, d_state, length, layout, options in (GPU_CASES[0], GPU_CASES[-1]):
        inputs = scan_inputs(batch, dim, d_state, length, layout, device="cuda", seed=length, **options)
        scan = functools.partial(cuda_scan.selective_scan_cuda, backward=backward)
        errors = errors_vs_reference(scan, cast_inputs(inputs, torch.float32), seed=dim)
        assert max(errors.values()) < TOLERANCE[torch.float32], errors


@pytest.mark.parametrize("backward", cuda_scan.BACKWARDS)
def test_the_kernels_are_custom_ops_that_trace_with_shapes_and_gradients(backward):
    """On meta tensors (no GPU needed) the ops' fake implementations give every output's and gradient's shape and
    dtype, autograd reaches each user tensor through the casts outside the ops, and make_fx records each kernel
    as one opaque node, as torch.compile sees it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    batch, dim, d_state, length = 2, 64, 16, 300

    def scan_and_grads(*inputs: torch.Tensor) -> tuple:
        out, last = cuda_scan.selective_scan_cuda(*inputs[:8], True, inputs[8], True, backward=backward)
        return out, last, *torch.autograd.grad(out.float().sum() + last.sum(), inputs)

    def new(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta").requires_grad_()

    f32 = torch.float32
    inputs = (
        *(new(batch, dim, length) for _ in range(2)),
        new(dim, d_state, dtype=f32),
        *(new(batch, d_state, length) for _ in range(2)),
        new(dim, dtype=f32),
        new(batch, dim, length),
        new(dim, dtype=f32),
        new(batch, dim, d_state, dtype=f32),
    )
    out, last, *grads = scan_and_grads(*inputs)
    assert (out.shape, out.dtype, last.shape, last.dtype) == (inputs[0].shape, torch.bfloat16, inputs[8].shape, f32)
    assert [(g.shape, g.dtype) for g in grads] == [(t.shape, t.dtype) for t in inputs]
    graph = make_fx(scan_and_grads)(*inputs).graph
    ops = [str(node.target) for node in graph.nodes if "mambakit" in str(node.target)]
    assert ops == ["mambakit.cuda_scan_fwd.default", "mambakit.cuda_scan_bwd.default"]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backward", cuda_scan.BACKWARDS)
def test_cuda_scan_in_a_cuda_graph_and_under_torch_compile(backward):
    """Forward and backward captured in one CUDA graph and replayed, and compiled with fullgraph=True (the kernels
    as opaque custom ops), each equal to the eager call."""
    inputs = scan_inputs(2, 64, 16, 300, "shared", device="cuda", seed=3)
    inputs = {k: v.float().detach().requires_grad_() for k, v in inputs.items()}
    grad = torch.randn_like(inputs["u"])

    def scan(**arguments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cuda_scan.selective_scan_cuda(
            **arguments, delta_softplus=True, return_last_state=True, backward=backward
        )

    def step(run: Callable = scan) -> list[torch.Tensor]:
        # Detached, so that no autograd graph outlives its step: a graph kept alive keeps the leaves' gradient
        # accumulators of the default stream, and a captured backward that meets them syncs with that stream.
        out, last = run(**inputs)
        grads = torch.autograd.grad((out * grad).sum() + last.sum(), list(inputs.values()))
        return [out.detach(), last.detach(), *grads]

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture: the kernels compile and load
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    compiled = step(torch.compile(scan, fullgraph=True))
    for name, got in (("graph", captured), ("compiled", compiled)):
        for index, (a, b) in enumerate(zip(got, eager, strict=True)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{name} output {index}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["shared", "grouped:4"])
def test_deterministic_backward_is_the_same_bit_for_bit(layout):
    """Backward v2 without atomics: every gradient equal from run to run, and as close to the float64 reference as
    the other backwards; chosen by torch.use_deterministic_algorithms(True) too."""
    from test_triton import cast_inputs, errors_vs_reference

    inputs = cast_inputs(scan_inputs(3, 256, 16, 1000, layout, device="cuda", seed=5), torch.bfloat16)
    scan = functools.partial(cuda_scan.selective_scan_cuda, deterministic=True)
    errors = errors_vs_reference(scan, inputs, seed=1)
    assert max(errors.values()) < TOLERANCE[torch.bfloat16], errors

    def gradients() -> list[torch.Tensor]:
        leaves = {k: None if v is None else v.detach().requires_grad_() for k, v in inputs.items()}
        out, last = cuda_scan.selective_scan_cuda(**leaves, delta_softplus=True, return_last_state=True)
        out.float().pow(2).sum().add(last.sum()).backward()
        return [v.grad for v in leaves.values() if v is not None]

    torch.use_deterministic_algorithms(True)
    try:
        first, second = gradients(), gradients()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@dataclass(frozen=True)
class Layout:
    """How a backward kernel splits the work (cuda/selective_scan.cu): `items` steps a lane, `lane_channels`
    channels a warp (so 32 / lane_channels lanes a channel, and chunks of that many lanes x items steps), `warps`
    warps a CTA. `shared_exp` (v2): one exp(A sum dt) over a lane's items after its first gives both the lane's decay
    (times a_0) and the factor of its adjoint (times the next lane's a_0); v1 takes exp(A sum dt) over all its items
    and a chain of products."""

    items: int
    lane_channels: int = 1
    warps: int = 1
    shared_exp: bool = False

    @property
    def lanes(self) -> int:
        return 32 // self.lane_channels

    @property
    def chunk(self) -> int:
        return self.lanes * self.items


def channel_sums(values, layout: Layout, groups: int):
    """dB or dC of one state and chunk from each channel's (batch, channels, lanes, items) share, summed as the
    kernel sums them, into (batch, groups, chunk). v2: within each warp a reduce-scatter over the lane bits above
    the segment bits (sum_over_lane_channels: at lane bit `offset`, a lane keeps the half of its items its bit
    selects and adds its partner's), after which lane (channel j, segment s) holds steps s * items + j * kept + r;
    then the CTA's warps in order (the per-warp slices); then the CTAs of a group (global atomics, any order). v1
    (one channel a warp) is the degenerate case: no halvings, and its shared-memory atomics sum a CTA in any order."""
    batch, channels, lanes, items = values.shape
    J, W = layout.lane_channels, layout.warps
    v = values.reshape(batch, channels // (J * W), W, J, lanes, items)
    lane_channel = torch.arange(J)
    offset = 16
    while offset >= lanes:
        bit = offset // lanes  # lane bit `offset` is this bit of the lane's channel in the warp
        half = v.shape[-1] // 2
        upper = (lane_channel & bit).bool()[:, None, None]
        send = torch.where(upper, v[..., :half], v[..., half:])
        keep = torch.where(upper, v[..., half:], v[..., :half])
        v = keep + send[:, :, :, lane_channel ^ bit]
        offset //= 2
    kept = v.shape[-1]
    steps = torch.arange(lanes)[None, :, None] * items + lane_channel[:, None, None] * kept + torch.arange(kept)
    assert sorted(steps.flatten().tolist()) == list(range(lanes * items)), "every step kept by exactly one lane"
    slices = torch.zeros(*v.shape[:3], lanes * items, dtype=values.dtype)
    slices[..., steps.flatten()] = v.flatten(3)
    cta_sums = slices.sum(2)
    return cta_sums.reshape(batch, groups, -1, lanes * items).sum(2)


def emulate_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast, layout: Layout):
    """A backward kernel's arithmetic in float64, per state and chunk (last chunk first), channels padded to whole
    CTAs with zeros as the kernel's inactive lanes are: the chunk's states rebuilt from the start states the forward
    saved (emulate_forward) as the forward does, with each channel's scan over its group of lanes; the adjoint
    lam_t = C_t g_t + a_{t+1} lam_{t+1} as a reverse pass per lane from zero, a suffix scan of the lanes' (product,
    value) pairs (the shuffle-down scan), and a second reverse pass from the adjoint entering each lane; the carry
    between chunks is a_t lam_t at the chunk's first step (d last_state at the end), and what is left after chunk 0 is
    the initial state's gradient; dB and dC summed over channels as channel_sums says. Returns the gradients in the
    order du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state."""
    F = torch.nn.functional
    batch, dim, length = u.shape
    states = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    cta = layout.lane_channels * layout.warps
    assert groups == 1 or (dim // groups) % cta == 0, "the launcher keeps a CTA inside a B/C group"
    padded_dim = math.ceil(dim / cta) * cta

    def channels(t):  # (batch, dim, ...) -> (batch, padded_dim, ...), the inactive channels zero
        return F.pad(t, (0, 0) * (t.dim() - 2) + (0, padded_dim - dim))

    raw = delta + delta_bias[:, None]
    dt = F.softplus(raw)
    gate = F.silu(z)
    items, lanes, chunk = layout.items, layout.lanes, layout.chunk
    chunks = math.ceil(length / chunk)
    _, _, chunk_states = emulate_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, save_every=chunk)
    chunk_states, dlast_p = channels(chunk_states), channels(dlast)
    A_p = F.pad(A, (0, 0, 0, padded_dim - dim))
    B_full = B.reshape(batch, groups, states, length).repeat_interleave(padded_dim // groups, dim=1)
    C_full = C.reshape(batch, groups, states, length).repeat_interleave(padded_dim // groups, dim=1)
    pad = chunks * chunk - length

    def split(t):  # (..., l) -> (..., chunks, lanes, items)
        return F.pad(t, (0, pad)).reshape(*t.shape[:-1], chunks, lanes, items)

    g = split(channels(dout * gate))
    dt_l, dtu_l = split(channels(dt)), split(channels(dt * u))
    B_l, C_l = split(B_full), split(C_full)
    y, lam_B, decay_grad = torch.zeros_like(dt_l), torch.zeros_like(dt_l), torch.zeros_like(dt_l)
    dB = torch.zeros(batch, groups, states, chunks, chunk, dtype=u.dtype)
    dC = torch.zeros_like(dB)
    dA, dh0 = torch.zeros_like(A_p), torch.zeros_like(dlast_p)
    ones = torch.ones(batch, padded_dim, 1, dtype=u.dtype)
    for n in range(states):
        carry = dlast_p[..., n]  # a lam at the first step of the chunk after
        A_n = A_p[:, n, None, None]
        for c in reversed(range(chunks)):
            a = torch.exp(dt_l[:, :, c] * A_n)
            b = dtu_l[:, :, c] * B_l[:, :, n, c]
            after_first = torch.exp(dt_l[:, :, c, :, 1:].sum(-1) * A_p[:, n, None])
            # The chunk's states, as in the forward: pass 1, the lanes' scan, pass 2 from the saved start state.
            h = torch.zeros_like(a[..., 0])
            for i in range(items):
                h = a[..., i] * h + b[..., i]
            lane_decay = (
                a[..., 0] * after_first if layout.shared_exp else torch.exp(dt_l[:, :, c].sum(-1) * A_p[:, n, None])
            )
            decay, h = lane_scan(lane_decay, h)
            state = entering(decay, h, chunk_states[:, :, c, n])
            decayed, h_items = torch.empty_like(a), torch.empty_like(a)  # a_i h_{i-1}, h_i
            for i in range(items):
                decayed[..., i] = a[..., i] * state
                state = a[..., i] * state + b[..., i]
                h_items[..., i] = state
            # The adjoint: the factor after item i is a_{i+1}, the next lane's first a after the last item
            # (1 in a channel's last lane, whose next adjoint is the carry, already multiplied by its a).
            cg = C_l[:, :, n, c] * g[:, :, c]
            a_after = torch.cat([a[..., 1:, 0], ones], dim=-1)
            factors = torch.cat([a[..., 1:], a_after[..., None]], dim=-1)
            value = torch.zeros_like(a[..., 0])
            for i in reversed(range(items)):
                value = cg[..., i] + factors[..., i] * value
            if layout.shared_exp:
                product = a_after * after_first
            else:
                product = a_after.clone()
                for i in reversed(range(items - 1)):
                    product = product * a[..., i + 1]
            offset = 1
            while offset < lanes:  # inclusive suffix scan over a channel's lanes
                value_after = F.pad(value, (0, offset))[..., offset:]
                product_after = F.pad(product, (0, offset), value=1.0)[..., offset:]
                value, product = value + product * value_after, product * product_after
                offset *= 2
            lam_in = F.pad(product, (0, 1), value=1.0)[..., 1:] * carry[..., None] + F.pad(value, (0, 1))[..., 1:]
            lam = torch.empty_like(a)
            for i in reversed(range(items)):
                lam_in = cg[..., i] + factors[..., i] * lam_in
                lam[..., i] = lam_in
            carry = a[..., 0, 0] * lam[..., 0, 0]
            dB[:, :, n, c] = channel_sums(lam * dtu_l[:, :, c], layout, groups)
            dC[:, :, n, c] = channel_sums(g[:, :, c] * h_items, layout, groups)
            lam_B[:, :, c] += lam * B_l[:, :, n, c]
            decay_grad[:, :, c] += A_n * lam * decayed
            dA[:, n] += (lam * decayed * dt_l[:, :, c]).sum((0, 2, 3))
            y[:, :, c] += C_l[:, :, n, c] * h_items
        dh0[..., n] = carry

    def merge(t):
        return t.reshape(*t.shape[:-3], chunks * chunk)[:, :dim, :length]

    y, lam_B, decay_grad = merge(y) + D[:, None] * u, merge(lam_B), merge(decay_grad)
    g = dout * gate
    sigmoid = torch.sigmoid(z)
    dz = dout * y * sigmoid * (1 + z * (1 - sigmoid))
    du = dt * lam_B + g * D[:, None]
    dD = (g * u).sum((0, 2))
    draw = (u * lam_B + decay_grad) * torch.sigmoid(raw)
    dB = dB.reshape(batch, groups, states, chunks * chunk)[..., :length].reshape(B.shape)
    dC = dC.reshape(batch, groups, states, chunks * chunk)[..., :length].reshape(C.shape)
    return du, draw, dA[:dim], dB, dC, dD, dz, draw.sum((0, 2)), dh0[:, :dim]


def v2_layouts(dim: int, groups: int, items: int) -> list[Layout]:
    """Every v2 layout the launcher may take for `dim` channels in `groups` groups, with `items` steps a lane."""
    per_group = dim // groups
    return [
        Layout(items, lane_channels, warps, shared_exp=True)
        for lane_channels, warps in cuda_scan.V2_LAYOUTS
        if lane_channels <= items and (groups == 1 or per_group % (lane_channels * warps) == 0)
    ]


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:], ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
# v2 reads B and C as float4s: 4 or 8 items a lane.
@pytest.mark.parametrize(("backward", "items"), [("v1", 1), ("v1", 4), ("v1", 8), ("v2", 4), ("v2", 8)])
def test_the_backward_decomposition_equals_autograd_of_the_reference(case, backward, items):
    batch, dim, d_state, length, layout, options = case
    inputs = scan_inputs(batch, dim, d_state, length, layout, seed=length, **{**options, "initial": True})
    inputs = with_every_option(inputs, dim)
    groups = 1 if inputs["B"].dim() == 3 else inputs["B"].shape[1]
    # v1: one channel a warp; v2: every layout it may take here.
    layouts = [Layout(items)] if backward == "v1" else v2_layouts(dim, groups, items)
    assert layouts
    generator = torch.Generator().manual_seed(7)
    dout = torch.randn(inputs["u"].shape, generator=generator, dtype=torch.float64)
    dlast = torch.randn(batch, dim, d_state, generator=generator, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    leaves = {name: inputs[name].clone().requires_grad_() for name in names}
    out, last = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
    expected = torch.autograd.grad((out * dout).sum() + (last * dlast).sum(), [leaves[name] for name in names])
    for kernel_layout in layouts:
        ours = emulate_backward(**inputs, dout=dout, dlast=dlast, layout=kernel_layout)
        errors = {name: relative_error(mine, theirs) for name, mine, theirs in zip(names, ours, expected, strict=True)}
        assert max(errors.values()) < 1e-10, (kernel_layout, errors)


def reference_kernels(save_every: int) -> tuple[Callable, Callable]:
    """Stand-ins for the forward and backward kernels' launches in float64 (reference and autograd), with the
    launches' signatures and output layouts, for checking what is built on them without a GPU."""

    def forward(inputs, softplus, backward):
        u, delta, A, B, C, D, z, delta_bias, initial = inputs
        initial = torch.zeros(*u.shape[:2], A.shape[1], dtype=u.dtype) if initial is None else initial
        out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, initial, True)
        return out, last, reference_states(u, delta, A, B, C, delta_bias, initial, every=save_every)

    def backward(inputs, chunk_states, softplus, backward, dout, dlast):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
        out, last = selective_scan_ref(*leaves[:8], softplus, leaves[8], True)
        total = (out * (0 if dout is None else dout)).sum() + (last * (0 if dlast is None else dlast)).sum()
        present = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(total, present, allow_unused=True))
        return tuple(None if t is None else next(grads) for t in leaves)

    return forward, backward


def staged_position(step: int, items: int, segments: int) -> int:
    """selective_scan.cu's staged_position: where step `step` of a chunk's B (or C) row lies in shared memory."""
    segment, item = divmod(step, items)
    return (item // 4) * (4 * segments) + segment * 4 + item % 4


@pytest.mark.parametrize("items", [8, 16, 32])
@pytest.mark.parametrize("segments", [32, 8, 4, 2, 1])
def test_chunk_staging_covers_every_step_once_with_conflict_free_stores(items, segments):
    """stage_chunk's order (thread i of a group takes quarter i // G of segment i % G): every four-step float4 of a
    row once, the same four steps side by side in shared memory, and each run of G <= 8 threads (one phase of a
    16-byte shared store) in distinct 4-bank groups."""
    quarters, group = items // 4, min(8, segments)
    steps = []
    for in_row in range(segments * items // 4):
        segment = in_row % group + group * (in_row // (group * quarters))
        steps.append(segment * items + 4 * ((in_row // group) % quarters))
    assert sorted(steps) == list(range(0, segments * items, 4))
    for step in steps:
        position = staged_position(step, items, segments)
        assert [staged_position(step + k, items, segments) for k in range(4)] == [position + k for k in range(4)]
    for start in range(0, len(steps), group):
        banks = [staged_position(step, items, segments) % 32 // 4 for step in steps[start : start + group]]
        assert len(set(banks)) == len(banks)


@pytest.mark.parametrize(("items", "save_every", "length"), [(8, 32, 2048), (8, 64, 1000), (16, 32, 4136)])
def test_saved_states_gathered_per_chunk_land_where_the_backward_reads_them(items, save_every, length):
    """The forward's saves where the backward's chunk is shorter: each lane starting a save puts the state entering
    it in the warp's shared rows (pitch N + 1), and the warp writes the chunk's saves out as one run; together they
    place the state entering step s * save_every, state n, at s * N + n of the channel's saved states."""
    chunk, states = 32 * items, 4
    saves = -(-length // save_every)
    written = {}
    for chunk_start in range(0, length, chunk):
        rows = {}
        for lane in range(32):
            if lane * items % save_every == 0:
                for n in range(states):
                    rows[(lane * items // save_every) * (states + 1) + n] = (chunk_start + lane * items, n)
        first_save = chunk_start // save_every
        for e in range(min(chunk // save_every, saves - first_save) * states):
            written[first_save * states + e] = rows[(e // states) * (states + 1) + e % states]
    assert written == {s * states + n: (s * save_every, n) for s in range(saves) for n in range(states)}


@pytest.mark.parametrize("with_initial", [True, False])
def test_a_long_sequences_backward_in_segments_equals_one_pass(with_initial):
    """The three-phase segmented backward (for one long sequence of few channels), from the states one forward pass
    saved, gives every gradient one pass gives, with and without an initial state."""
    save_every, segments = 8, 4
    forward, backward = reference_kernels(save_every)
    raw = scan_inputs(1, 5, 3, 64, "grouped:1", seed=4, initial=with_initial)
    inputs = cuda_scan._Prepared(
        raw["u"], raw["delta"], raw["A"], raw["B"].reshape(1, 1, 3, 64), raw["C"].reshape(1, 1, 3, 64),
        raw["D"], raw["z"], raw["delta_bias"], raw.get("initial_state"),
    )  # fmt: skip
    _, _, saved_states = forward(inputs, True, "v2")
    dout, dlast = torch.randn_like(raw["u"]), torch.randn(1, 5, 3, dtype=torch.float64)
    expected = backward(inputs, saved_states, True, "v2", dout, dlast)
    got = cuda_scan.segmented_backward(inputs, saved_states, True, "v2", dout, dlast, segments, backward)
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial")
    for name, a, b in zip(names, got, expected, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape and relative_error(a, b) < 1e-12, name


H100 = type("Properties", (), {"multi_processor_count": 132, "shared_memory_per_block_optin": 227 * 1024})
SM86 = type("Properties", (), {"multi_processor_count": 84, "shared_memory_per_block_optin": 99 * 1024})


def test_the_forward_takes_longer_lanes_only_where_its_grid_leaves_the_gpu_short(monkeypatch):
    """16 steps a lane where the grid has at most 4 CTAs an SM (B1 D1536: 384 CTAs on 132 SMs) and its shared memory
    fits, 8 where it fills the GPU (B8 D1536: 3,072) or where 16 would not fit (64 states: 280 KB)."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: H100)
    cuda_scan._shared_limit.cache_clear()
    try:
        for states, expected in ((16, 16), (32, 16), (64, 8)):
            shared = functools.partial(cuda_scan.forward_shared_bytes, states, cuda_scan.CHANNELS, 32)
            assert cuda_scan.forward_items(384, 0, shared) == expected, states
            assert cuda_scan.forward_items(3072, 0, shared) == cuda_scan.FORWARD_ITEMS == 8
            assert shared(cuda_scan.forward_items(384, 0, shared)) <= H100.shared_memory_per_block_optin
    finally:
        cuda_scan._shared_limit.cache_clear()


def test_no_kernel_launches_with_more_shared_memory_than_a_cta_has(monkeypatch):
    """The forward at 64 states needs 142 KB of shared memory a CTA at its smallest tile: more than an sm_86 has (the
    scan runs on Triton there), less than an H100's 227 KB."""
    cuda_scan._shared_limit.cache_clear()
    try:
        for properties, fitting in ((SM86, (16, 32)), (H100, (16, 32, 64))):
            monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index, found=properties: found)
            cuda_scan._shared_limit.cache_clear()
            for states in (16, 32, 64):
                assert cuda_scan.forward_fits(states, torch.device("cuda", 0)) is (states in fitting), states
        # Backward v1 keeps a CTA's B, C and sums for 4 channels: 290 KB at 64 states, so v2 runs there.
        for states, variant in ((32, "v1"), (64, "v2")):
            assert cuda_scan._variant("v1", False, states, torch.device("cuda", 0)) == variant, states
        assert cuda_scan._variant("v1", False, 64, torch.device("meta")) == "v1"  # tracing: no GPU to ask
    finally:
        cuda_scan._shared_limit.cache_clear()


def test_segments_only_for_one_long_sequence_of_few_channels(monkeypatch):
    def shape(batch, dim, length):
        return cuda_scan._Prepared(
            torch.empty(batch, dim, length, device="meta"), None, torch.empty(dim, 16, device="meta"),
            torch.empty(batch, 1, 16, length, device="meta"),
            None, None, None, None, None,
        )  # fmt: skip

    assert cuda_scan.segments_for(shape(1, 1536, 65536), "v2") == 8
    assert cuda_scan.segments_for(shape(1, 256, 1 << 20), "v2") == 32
    assert cuda_scan.segments_for(shape(1, 128, 1 << 20), "v2") == cuda_scan.MAX_SEGMENTS
    assert cuda_scan.segments_for(shape(2, 1536, 65536), "v2") == 1  # more than one sequence
    assert cuda_scan.segments_for(shape(1, 1536, 4096), "v2") == 1  # too short to pay for the phases
    assert cuda_scan.segments_for(shape(1, 1536, 65536 + 32), "v2") == 1  # no equal segments of whole chunks
    assert cuda_scan.segments_for(shape(1, 12288, 65536), "v2") == 1  # enough channels already
    monkeypatch.setattr(cuda_scan, "SEGMENTED_BACKWARD", False)
    assert cuda_scan.segments_for(shape(1, 1536, 65536), "v2") == 1


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backward", cuda_scan.BACKWARDS)
def test_a_long_sequence_in_segments_on_the_gpu_matches_float64_reference(backward, monkeypatch):
    from test_triton import cast_inputs, errors_vs_reference

    monkeypatch.setattr(cuda_scan, "MIN_SEGMENT", 1024)
    inputs = cast_inputs(scan_inputs(1, 64, 16, 8192, "shared", device="cuda", seed=11), torch.float32)
    prepared = cuda_scan._prepare(*(inputs.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")), None)
    assert cuda_scan.segments_for(prepared, backward) == 8
    scan = functools.partial(cuda_scan.selective_scan_cuda, backward=backward)
    errors = errors_vs_reference(scan, inputs, seed=3)
    assert max(errors.values()) < TOLERANCE[torch.float32], errors
