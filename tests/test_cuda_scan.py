"""The `cuda` backend (CUDA C++ compiled at run time by NVRTC).

Without a GPU: every forward-kernel variant compiles to a cubin for sm_80 and sm_90, and an emulation of the
kernel's exact decomposition (per-lane items from a zero state, the lanes' shuffle scan, the chunk carry, the
decay as one exp of the summed steps) equals the float64 reference. With a GPU (`gpu` marker): the kernel against
the float64 reference over the Triton test matrix, and the disk cache's hit path."""

from __future__ import annotations

import itertools
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
def test_every_forward_variant_compiles_without_a_gpu(architecture, tmp_path, monkeypatch):
    monkeypatch.setenv(nvrtc.CACHE_ENV_VAR, str(tmp_path))
    flags = list(itertools.product((False, True), repeat=6))
    names = [cuda_scan.kernel_name(1, 16, cuda_scan.ITEMS, cuda_scan.CHANNELS, *f) for f in flags]
    names += [
        cuda_scan.kernel_name(dtype, states, cuda_scan.ITEMS, channels, True, True, True, True, True, True)
        for dtype in cuda_scan.DTYPE_CODES.values()
        for states, channels in ((1, 1), (16, 2), (cuda_scan.MAX_STATES, cuda_scan.CHANNELS))
    ]
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
def test_cuda_forward_matches_float64_reference(case, dtype):
    batch, dim, d_state, length, layout, options = case
    inputs = scan_inputs(batch, dim, d_state, length, layout, device="cuda", seed=length, **options)
    low = {k: v if v is None or k not in ("u", "delta", "z", "B", "C") else v.to(dtype) for k, v in inputs.items()}
    low = {k: v if v is None or k in ("u", "delta", "z", "B", "C") else v.float() for k, v in low.items()}
    exact = {k: None if v is None else v.double() for k, v in low.items()}
    expected, expected_last = selective_scan_ref(**exact, delta_softplus=True, return_last_state=True)
    with torch.no_grad():
        out, last = cuda_scan.selective_scan_cuda(**low, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    errors = {"out": relative_error(out, expected), "last": relative_error(last, expected_last)}
    assert max(errors.values()) < TOLERANCE[dtype], errors
