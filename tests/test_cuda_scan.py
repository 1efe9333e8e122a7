"""The `cuda` backend (CUDA C++ compiled at run time by NVRTC).

Without a GPU: every forward-kernel variant compiles to a cubin for sm_80 and sm_90, and an emulation of the
kernel's exact decomposition (per-lane items from a zero state, the lanes' shuffle scan, the chunk carry, the
decay as one exp of the summed steps) equals the float64 reference. With a GPU (`gpu` marker): the kernel against
the float64 reference over the Triton test matrix, and the disk cache's hit path."""

from __future__ import annotations

import math
import sys
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


@needs_nvrtc
@pytest.mark.parametrize("architecture", [80, 90])
def test_every_kernel_variant_compiles_without_a_gpu(architecture, tmp_path, monkeypatch):
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    # Each flag on and off (from all on), in each dtype, and the size extremes: every code path of both kernels.
    items, channels = cuda_scan.ITEMS, cuda_scan.CHANNELS
    names = []
    for dtype in cuda_scan.DTYPE_CODES.values():
        for count, kernel in ((7, cuda_scan.kernel_name), (6, cuda_scan.backward_kernel_name)):
            settings = [[True] * count] + [[j != off for j in range(count)] for off in range(count)]
            names += [kernel(dtype, 16, items, channels, *flags) for flags in settings]
            names += [kernel(dtype, states, items, c, *[True] * count) for states, c in ((1, 1), (64, 2))]
    compiled = nvrtc.compile_kernels(cuda_scan.source(), names, architecture)
    assert not compiled.cached and compiled.cubin[:4] == b"\x7fELF"
    assert set(compiled.lowered) == set(names) and all(m.startswith("_Z") for m in compiled.lowered.values())
    again = nvrtc.compile_kernels(cuda_scan.source(), names, architecture)
    assert again.cached and again.cubin == compiled.cubin and again.lowered == compiled.lowered


@needs_nvrtc
def test_a_compile_error_is_raised_with_nvrtcs_log(tmp_path, monkeypatch):
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    with pytest.raises(nvrtc.NvrtcError, match="undefined"):
        nvrtc.compile_kernels("__global__ void k() { undefined_call(); }", ["k"], 90)


def emulate_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, items: int = 4):
    """The forward kernel's arithmetic in float64: chunks of 32 lanes x `items` steps; per state, pass 1 from a
    zero state per lane, an inclusive Kogge-Stone scan of (decay, state) over the lanes (as the shuffles do it),
    the state entering each lane from the chunk's carry, pass 2 with the outputs. Steps past the end get delta 0."""
    batch, dim, length = u.shape
    states = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.reshape(batch, groups, states, length).repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    C = C.reshape(batch, groups, states, length).repeat_interleave(dim // groups, dim=1)
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    chunk = 32 * items
    padded = math.ceil(length / chunk) * chunk
    pad = padded - length

    def lanes(t):  # (..., l) -> (..., chunks, 32 lanes, items)
        return torch.nn.functional.pad(t, (0, pad)).reshape(*t.shape[:-1], padded // chunk, 32, items)

    dt, dtu = lanes(delta), lanes(delta * u)
    B, C = lanes(B), lanes(C)
    y = torch.zeros_like(dt)
    carry = initial_state.clone()  # (b, d, n)
    last = torch.empty_like(carry)
    for n in range(states):
        h_carry = carry[..., n]
        for c in range(padded // chunk):
            a = torch.exp(dt[:, :, c] * A[:, n, None, None])  # (b, d, 32, items)
            b = dtu[:, :, c] * B[:, :, n, c]
            h = torch.zeros_like(a[..., 0])
            for i in range(items):
                h = a[..., i] * h + b[..., i]
            decay = torch.exp(dt[:, :, c].sum(-1) * A[:, n, None])
            offset = 1
            while offset < 32:  # inclusive scan over lanes
                h_before = torch.nn.functional.pad(h, (offset, 0))[..., :32]
                decay_before = torch.nn.functional.pad(decay, (offset, 0), value=1.0)[..., :32]
                h = decay * h_before + h
                decay = decay * decay_before
                offset *= 2
            decay_in = torch.nn.functional.pad(decay, (1, 0), value=1.0)[..., :32]
            h_in = torch.nn.functional.pad(h, (1, 0))[..., :32]
            state = decay_in * h_carry[..., None] + h_in
            h_carry = decay[..., 31] * h_carry + h[..., 31]
            for i in range(items):
                state = a[..., i] * state + b[..., i]
                y[:, :, c, :, i] += C[:, :, n, c, :, i] * state
        last[..., n] = h_carry
    y = y.reshape(batch, dim, padded)[..., :length] + D[:, None] * u
    return y * torch.nn.functional.silu(z), last


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:], ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
@pytest.mark.parametrize("items", [1, 4])
def test_the_kernels_decomposition_equals_the_float64_reference(case, items):
    batch, dim, d_state, length, layout, options = case
    inputs = scan_inputs(batch, dim, d_state, length, layout, seed=length, **{**options, "initial": True})
    for name, default in (("D", torch.zeros(dim)), ("z", None), ("delta_bias", torch.zeros(dim))):
        if inputs.get(name) is None:
            inputs[name] = default.double() if default is not None else torch.full_like(inputs["u"], 30.0)
    expected, expected_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    out, last = emulate_forward(**inputs, items=items)
    assert relative_error(out, expected) < 1e-12
    assert relative_error(last, expected_last) < 1e-12


TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
GPU_CASES = [
    *[case for case in CASES if case[4] != "time_invariant"],
    (2, 100, 16, 1000, "shared", {}),
    (1, 96, 16, 2049, "grouped:4", {}),
    (1, 6, 16, 9000, "shared", {}),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
def test_cuda_matches_float64_reference_with_every_gradient(case, dtype):
    from test_triton import cast_inputs, errors_vs_reference

    batch, dim, d_state, length, layout, options = case
    inputs = cast_inputs(scan_inputs(batch, dim, d_state, length, layout, device="cuda", seed=length, **options), dtype)
    errors = errors_vs_reference(cuda_scan.selective_scan_cuda, inputs, seed=dim)
    bad = {k: v for k, v in errors.items() if not v < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad}"


def emulate_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast, items: int = 4):
    """The backward kernel's arithmetic in float64, per state and chunk (last chunk first): the chunk's states
    rebuilt from its saved start state as the forward does; the adjoint lam_t = C_t g_t + a_{t+1} lam_{t+1} as a
    reverse pass per lane from zero, a suffix scan of the lanes' (product, value) pairs (the shuffle-down scan),
    and a second reverse pass from the adjoint entering each lane; the carry between chunks is a_t lam_t at the
    chunk's first step (d last_state at the end), and what is left after chunk 0 is the initial state's
    gradient. Returns the gradients in the order du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state."""
    F = torch.nn.functional
    batch, dim, length = u.shape
    states = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    per_group = dim // groups
    B_full = B.reshape(batch, groups, states, length).repeat_interleave(per_group, dim=1)
    C_full = C.reshape(batch, groups, states, length).repeat_interleave(per_group, dim=1)
    raw = delta + delta_bias[:, None]
    dt = F.softplus(raw)
    chunk = 32 * items
    chunks = math.ceil(length / chunk)
    pad = chunks * chunk - length

    def lanes(t):
        return F.pad(t, (0, pad)).reshape(*t.shape[:-1], chunks, 32, items)

    # What the forward kernel saves: the state at each chunk's start.
    chunk_states = torch.empty(batch, dim, chunks, states, dtype=u.dtype)
    h = initial_state.clone()
    for t in range(length):
        if t % chunk == 0:
            chunk_states[:, :, t // chunk] = h
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B_full[..., t]
    gate = F.silu(z)
    g = lanes(dout * gate)
    dt_l, dtu_l, u_l = lanes(dt), lanes(dt * u), lanes(u)
    B_l, C_l = lanes(B_full), lanes(C_full)
    y, du, ddt = torch.zeros_like(dt_l), torch.zeros_like(dt_l), torch.zeros_like(dt_l)
    dB, dC = torch.zeros_like(B_l), torch.zeros_like(C_l)
    dA, dh0 = torch.zeros_like(A), torch.zeros_like(initial_state)
    ones = torch.ones(batch, dim, 1, dtype=u.dtype)
    for n in range(states):
        carry = dlast[..., n]  # a lam at the first step of the chunk after
        for c in reversed(range(chunks)):
            a = torch.exp(dt_l[:, :, c] * A[:, n, None, None])
            b = dtu_l[:, :, c] * B_l[:, :, n, c]
            # The chunk's states, as in the forward: pass 1, lane scan, pass 2 from the saved start state.
            h = torch.zeros_like(a[..., 0])
            for i in range(items):
                h = a[..., i] * h + b[..., i]
            decay = torch.exp(dt_l[:, :, c].sum(-1) * A[:, n, None])
            offset = 1
            while offset < 32:
                h_before = F.pad(h, (offset, 0))[..., :32]
                decay_before = F.pad(decay, (offset, 0), value=1.0)[..., :32]
                h, decay = decay * h_before + h, decay * decay_before
                offset *= 2
            state = F.pad(decay, (1, 0), value=1.0)[..., :32] * chunk_states[:, :, c, n, None]
            state = state + F.pad(h, (1, 0))[..., :32]
            h_prev, h_items = torch.empty_like(a), torch.empty_like(a)
            for i in range(items):
                h_prev[..., i] = state
                state = a[..., i] * state + b[..., i]
                h_items[..., i] = state
            # The adjoint: the factor after item i is a_{i+1}, the next lane's first a after the last item
            # (1 in lane 31, whose next adjoint is the carry, already multiplied by its a).
            cg = C_l[:, :, n, c] * g[:, :, c]
            a_after = torch.cat([a[..., 1:, 0], ones], dim=-1)
            factors = torch.cat([a[..., 1:], a_after[..., None]], dim=-1)
            value, product = torch.zeros_like(a[..., 0]), a_after.clone()
            for i in reversed(range(items)):
                value = cg[..., i] + factors[..., i] * value
                if i < items - 1:
                    product = product * a[..., i + 1]
            offset = 1
            while offset < 32:  # inclusive suffix scan over lanes
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
            dB[:, :, n, c] = lam * dtu_l[:, :, c]
            dC[:, :, n, c] = g[:, :, c] * h_items
            ddt[:, :, c] += lam * (h_prev * a * A[:, n, None, None] + u_l[:, :, c] * B_l[:, :, n, c])
            du[:, :, c] += lam * dt_l[:, :, c] * B_l[:, :, n, c]
            dA[:, n] += (lam * h_prev * a * dt_l[:, :, c]).sum((0, 2, 3))
            y[:, :, c] += C_l[:, :, n, c] * h_items
        dh0[..., n] = carry

    def unlanes(t):
        return t.reshape(*t.shape[:-3], chunks * chunk)[..., :length]

    y, du, ddt = unlanes(y) + D[:, None] * u, unlanes(du), unlanes(ddt)
    g = dout * gate
    sigmoid = torch.sigmoid(z)
    dz = dout * y * sigmoid * (1 + z * (1 - sigmoid))
    du = du + g * D[:, None]
    dD = (g * u).sum((0, 2))
    draw = ddt * torch.sigmoid(raw)
    shape = (batch, groups, per_group, states, length)
    dB = unlanes(dB).reshape(shape).sum(2).reshape(B.shape)
    dC = unlanes(dC).reshape(shape).sum(2).reshape(C.shape)
    return du, draw, dA, dB, dC, dD, dz, draw.sum((0, 2)), dh0


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:], ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
@pytest.mark.parametrize("items", [1, 4])
def test_the_backward_decomposition_equals_autograd_of_the_reference(case, items):
    batch, dim, d_state, length, layout, options = case
    inputs = scan_inputs(batch, dim, d_state, length, layout, seed=length, **{**options, "initial": True})
    for name in ("D", "delta_bias"):
        if inputs.get(name) is None:
            inputs[name] = torch.zeros(dim, dtype=torch.float64)
    if inputs.get("z") is None:
        inputs["z"] = torch.full_like(inputs["u"], 30.0)
    generator = torch.Generator().manual_seed(7)
    dout = torch.randn(inputs["u"].shape, generator=generator, dtype=torch.float64)
    dlast = torch.randn(batch, dim, d_state, generator=generator, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    leaves = {name: inputs[name].clone().requires_grad_() for name in names}
    out, last = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
    expected = torch.autograd.grad((out * dout).sum() + (last * dlast).sum(), [leaves[name] for name in names])
    ours = emulate_backward(**inputs, dout=dout, dlast=dlast, items=items)
    errors = {name: relative_error(mine, theirs) for name, mine, theirs in zip(names, ours, expected, strict=True)}
    assert max(errors.values()) < 1e-10, errors
