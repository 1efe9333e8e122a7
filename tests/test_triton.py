"""The `triton` backend's kernels against the float64 reference (and against mamba-ssm where installed).

GPU tests are marked `gpu` and skipped without CUDA. Without a GPU, `test_kernels_in_triton_interpreter` still
runs the same kernels on tiny shapes in Triton's CPU interpreter, in a subprocess because TRITON_INTERPRET must
be set before triton is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mambakit.ops.reference import selective_scan_ref
from mambakit.ops.timing import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from scan_cases import CASES, run_in_triton_interpreter, scan_inputs

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
LOW_PRECISION_INPUTS = ("u", "delta", "z", "B", "C")  # as a Mamba layer feeds them; A, D, bias, h0 stay fp32

gpu = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")


def cast_inputs(inputs: dict, dtype: torch.dtype) -> dict:
    """The scan's inputs in `dtype` (u, delta, z, B, C; time-invariant B/C stay fp32 like A), others fp32."""
    time_invariant = inputs["B"].dim() == 2
    return {
        k: None
        if v is None
        else v.to(dtype if k in LOW_PRECISION_INPUTS and not (time_invariant and k in ("B", "C")) else torch.float32)
        for k, v in inputs.items()
    }


def scan_with_grads(fn, inputs: dict, grad_out: torch.Tensor, grad_last: torch.Tensor | None):
    """out, last state (None without `grad_last`) and every input's gradient of fn on leaf copies of inputs (dtypes
    kept)."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    if grad_last is None:
        out, last = fn(**leaves, delta_softplus=True, return_last_state=False), None
        loss = (out.double() * grad_out).sum()
    else:
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        loss = (out.double() * grad_out).sum() + (last.double() * grad_last).sum()
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out, last, dict(zip(names, grads, strict=True))


def errors_vs_reference(fn, inputs: dict, seed: int = 0, last_state: bool = True) -> dict[str, float]:
    """Relative errors of fn's output, last state (unless `last_state` is False) and gradients against
    selective_scan_ref run in float64 on the same (already rounded) inputs."""
    exact = {k: None if v is None else v.double() for k, v in inputs.items()}
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch, dim, length = inputs["u"].shape
    grad_out = torch.randn(batch, dim, length, generator=generator, dtype=torch.float64).to(inputs["u"].device)
    grad_last = torch.randn(batch, dim, inputs["A"].shape[1], generator=generator, dtype=torch.float64).to(
        inputs["u"].device
    )
    grad_last = grad_last if last_state else None
    ref_out, ref_last, ref_grads = scan_with_grads(selective_scan_ref, exact, grad_out, grad_last)
    out, last, grads = scan_with_grads(fn, inputs, grad_out, grad_last)
    assert out.dtype == inputs["u"].dtype
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, name
    errors = {"out": relative_error(out, ref_out)}
    if last_state:
        assert last.dtype == torch.float32
        errors["last"] = relative_error(last, ref_last)
    errors.update({f"d{name}": relative_error(grad, ref_grads[name]) for name, grad in grads.items()})
    # An exactly zero gradient (dA with no state before the first step and L = 1) has no relative error:
    # compare the rounding noise against the size of the other gradients instead.
    scale = max(ref_grads[name].double().norm().item() for name in grads)
    for name, grad in grads.items():
        if ref_grads[name].count_nonzero() == 0:
            errors[f"d{name}"] = grad.double().norm().item() / scale
    return errors


def triton_scan(config=None):
    from mambakit.ops.triton_scan import selective_scan_triton

    def fn(**kwargs):
        return selective_scan_triton(**kwargs, config=config)

    return fn


# batch, dim, N, L, B/C layout, options: odd L, channel counts that no block size divides, groups,
# time-invariant B/C, with and without gate, skip, bias and initial state.
GPU_CASES = [
    *CASES,
    (2, 100, 16, 1000, "shared", {}),
    (1, 96, 16, 2049, "grouped:4", {}),
    (2, 33, 8, 513, "time_invariant", {}),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
def test_triton_matches_float64_reference(case, dtype):
    batch, dim, d_state, length, layout, options = case
    inputs = cast_inputs(scan_inputs(batch, dim, d_state, length, layout, device="cuda", seed=length, **options), dtype)
    errors = errors_vs_reference(triton_scan(), inputs, seed=dim)
    bad = {k: v for k, v in errors.items() if not v < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "config",
    [
        dict(fwd_block_d=4, fwd_block_l=8, fwd_warps=1, bwd_block_d=8, bwd_block_l=32, bwd_warps=2),
        dict(fwd_block_d=32, fwd_block_l=64, fwd_warps=4, bwd_block_d=32, bwd_block_l=8, bwd_warps=1),
        dict(fwd_block_d=8, fwd_block_l=32, fwd_unroll=1, bwd_block_d=8, bwd_block_l=32),  # default for many rows
    ],
    ids=["save-every-4th-fwd-tile", "save-inside-fwd-tiles", "wide"],
)
def test_triton_tile_shapes_do_not_change_results(config):
    from mambakit.ops.triton_scan import ScanConfig

    inputs = cast_inputs(scan_inputs(2, 40, 16, 300, "grouped:2", device="cuda", seed=1), torch.float32)
    errors = errors_vs_reference(triton_scan(ScanConfig(**config)), inputs)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.gpu
@gpu
def test_triton_scanning_in_pieces_equals_one_pass():
    """initial_state in and the last state out carry a scan across calls, gradients included."""
    inputs = cast_inputs(scan_inputs(2, 24, 16, 200, "shared", device="cuda", seed=3), torch.float32)
    per_step = ("u", "delta", "z", "B", "C")

    def pieces(**kw):
        out1, state = triton_scan()(**{k: v[..., :77] if k in per_step else v for k, v in kw.items()})
        second = {k: v[..., 77:] if k in per_step else v for k, v in kw.items()}
        out2, last = triton_scan()(**{**second, "initial_state": state})
        return torch.cat([out1, out2], -1), last

    errors = errors_vs_reference(pieces, inputs)
    assert max(errors.values()) < 1e-5, errors


def check_channel_major_layout(batch: int, dim: int, length: int, device: str) -> None:
    """u, delta, z laid out as (dim, batch, L), as the Mamba mixer makes them: the same results, and the output
    and the gradients come back in that layout (no copies between the mixer's GEMMs and the scan)."""
    from mambakit.ops.triton_scan import selective_scan_triton

    inputs = cast_inputs(scan_inputs(batch, dim, 4, length, "shared", device=device, seed=5), torch.float32)
    channel_major = {
        k: v.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_() if k in ("u", "delta", "z") else v
        for k, v in inputs.items()
    }
    errors = errors_vs_reference(triton_scan(), channel_major)
    assert max(errors.values()) < 1e-5, errors
    out = selective_scan_triton(**channel_major)
    out.sum().backward()
    for name in ("u", "delta", "z"):
        assert channel_major[name].grad.stride() == channel_major[name].stride(), name
    assert out.stride() == channel_major["u"].stride()


@pytest.mark.gpu
@gpu
def test_triton_keeps_the_mixers_channel_major_layout():
    check_channel_major_layout(3, 40, 150, "cuda")


@pytest.mark.gpu
@gpu
def test_triton_stable_with_large_decays():
    inputs = scan_inputs(1, 16, 16, 3000, "shared", device="cuda", seed=11)
    inputs["delta"] = inputs["delta"].abs() * 40  # |delta * A| up to ~100: decays underflow to 0, never overflow
    errors = errors_vs_reference(triton_scan(), cast_inputs(inputs, torch.float32))
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.gpu
@gpu
@pytest.mark.slow
def test_triton_forward_at_a_million_steps():
    """L = 2^20 in fp32 against the `torch` backend in float64 (chunked, so it finishes in seconds on a GPU)."""
    from mambakit.ops.torch_scan import selective_scan_torch

    inputs = cast_inputs(scan_inputs(1, 8, 16, 1 << 20, "shared", device="cuda", seed=20), torch.float32)
    out, last = triton_scan()(**inputs, delta_softplus=True, return_last_state=True)
    exact = {k: None if v is None else v.double() for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_torch(**exact, delta_softplus=True, return_last_state=True, chunk_size=1 << 20)
    assert relative_error(out, ref_out) < 1e-5
    assert relative_error(last, ref_last) < 1e-5


def mamba_ssm_scan():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def fn(u, delta, A, B, C, D, z, delta_bias, initial_state=None, delta_softplus=False, return_last_state=False):
        assert initial_state is None
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    return fn


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["shared", "grouped:2"])
def test_triton_matches_mamba_ssm(layout, dtype):
    """At least as close to the float64 truth as mamba-ssm's CUDA kernel, on every output and gradient (within the
    dtype's tolerance where both are near exact): no last-state gradient, which mamba-ssm does not compute."""
    pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    inputs = cast_inputs(scan_inputs(2, 64, 16, 777, layout, device="cuda", seed=4, initial=False), dtype)
    triton = errors_vs_reference(triton_scan(), inputs, last_state=False)
    peer = errors_vs_reference(mamba_ssm_scan(), inputs, last_state=False)
    worse = [name for name in triton if triton[name] > max(TOLERANCE[dtype], 2 * peer[name])]
    assert not worse, f"triton further from float64 on {worse}: triton {triton}, mamba-ssm {peer}"


def state_update_errors(batch: int, dim: int, d_state: int, groups: int, dtype: torch.dtype, device: str) -> dict:
    """Three decode steps of the Triton kernel against the reference in float64: outputs and the final state."""
    from mambakit.ops.reference import selective_state_update_ref
    from mambakit.ops.triton_step import selective_state_update_triton

    g = torch.Generator().manual_seed(dim)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    bc = (batch, groups, d_state) if groups > 1 else (batch, d_state)
    A = -torch.rand(dim, d_state, generator=g, dtype=torch.float64).to(device) - 0.1
    D, bias = rand(dim), rand(dim, scale=0.3)
    state = rand(batch, dim, d_state)
    exact_state, errors = state.clone(), {}
    state = state.float()
    for step in range(3):
        x, dt, z, B, C = rand(batch, dim), rand(batch, dim, scale=0.5), rand(batch, dim), rand(*bc), rand(*bc)
        ref = selective_state_update_ref(exact_state, x, dt, A, B, C, D, z, bias, dt_softplus=True)
        low = [t.to(dtype) for t in (x, dt, A.float(), B, C)]
        out = selective_state_update_triton(state, *low, D.float(), z.to(dtype), bias.float(), dt_softplus=True)
        assert out.dtype == dtype
        errors[f"y{step}"] = relative_error(out, ref)
    errors["state"] = relative_error(state, exact_state)
    return errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 48, 16, 1), (3, 70, 5, 2), (1, 1536, 16, 1)], ids=str)
def test_triton_state_update_matches_reference(shape, dtype):
    errors = state_update_errors(*shape, dtype, "cuda")
    assert max(errors.values()) < TOLERANCE[dtype], errors


def add_rms_norm_errors(
    rows: int, width: int, weight_dtype: torch.dtype, first_block: bool, residual_in_fp32: bool, device: str
) -> dict:
    """Relative errors of the Triton add + RMSNorm against the PyTorch form, on both outputs."""
    from mambakit.ops.reference import add_rms_norm_ref
    from mambakit.ops.triton_norm import add_rms_norm_triton

    g = torch.Generator(device=device).manual_seed(width)
    hidden = torch.randn(rows, width, device=device, generator=g).to(weight_dtype)
    residual = None if first_block else torch.randn(rows, width, device=device, generator=g)
    weight = (1 + 0.1 * torch.randn(width, device=device, generator=g)).to(weight_dtype)
    expected = add_rms_norm_ref(hidden, residual, weight, 1e-5, residual_in_fp32)
    with torch.no_grad():
        got = add_rms_norm_triton(hidden, residual, weight, 1e-5, residual_in_fp32)
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    return {name: relative_error(g_, e) for name, g_, e in zip(("normed", "residual"), got, expected, strict=True)}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("first_block", [True, False])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_triton_add_rms_norm_matches_pytorch(weight_dtype, first_block, residual_in_fp32):
    errors = add_rms_norm_errors(37, 768, weight_dtype, first_block, residual_in_fp32, "cuda")
    assert max(errors.values()) < TOLERANCE[weight_dtype], errors


def interpreter_check() -> None:
    """A few tiny cases through the kernels in Triton's CPU interpreter (run with TRITON_INTERPRET=1): several
    channel blocks and tiles (saved states every second forward tile), groups, time-invariant B/C, optional
    inputs off, forward and every gradient within 1e-5 of float64."""
    from mambakit.ops.triton_scan import ScanConfig

    save_at_tile_starts = ScanConfig(fwd_block_d=4, fwd_block_l=8, bwd_block_d=4, bwd_block_l=16)
    save_inside_tiles = ScanConfig(
        fwd_block_d=2, fwd_block_l=64, fwd_unroll=4, bwd_block_d=4, bwd_block_l=16, bwd_unroll=2
    )
    cases = [
        (2, 6, 4, 37, "shared", {}, save_at_tile_starts),
        (1, 6, 3, 21, "grouped:3", {}, save_at_tile_starts),
        (2, 5, 3, 19, "time_invariant", {}, save_at_tile_starts),
        (2, 8, 5, 19, "grouped:2", {"gated": False, "bias": False, "initial": False}, save_at_tile_starts),
        (2, 6, 4, 37, "shared", {}, save_inside_tiles),
        (2, 5, 3, 70, "time_invariant", {}, save_inside_tiles),
    ]
    for batch, dim, d_state, length, layout, options, config in cases:
        inputs = cast_inputs(scan_inputs(batch, dim, d_state, length, layout, seed=length, **options), torch.float32)
        errors = errors_vs_reference(triton_scan(config), inputs)
        bad = {k: v for k, v in errors.items() if not v < 1e-5}
        assert not bad, f"{layout} {batch}x{dim}x{d_state}x{length}: relative errors over 1e-5: {bad}"
    for shape in ((2, 48, 16, 1), (3, 70, 5, 2)):
        errors = state_update_errors(*shape, torch.float32, "cpu")
        assert max(errors.values()) < 1e-5, f"state update {shape}: {errors}"
    check_channel_major_layout(2, 6, 21, "cpu")
    for first_block in (True, False):
        errors = add_rms_norm_errors(3, 100, torch.float32, first_block, True, "cpu")
        assert max(errors.values()) < 1e-6, f"add_rms_norm: {errors}"
    check_atomic_backward_refused_under_deterministic_algorithms()


def check_atomic_backward_refused_under_deterministic_algorithms() -> None:
    """The scan's per-step dB/dC are added with atomics: under torch's deterministic algorithms its backward
    refuses to run, as torch's own atomic ops do."""
    from mambakit.ops.backends import NondeterministicError

    inputs = cast_inputs(scan_inputs(1, 4, 2, 9, "shared", seed=1), torch.float32)
    inputs = {k: None if v is None else v.requires_grad_() for k, v in inputs.items()}
    torch.use_deterministic_algorithms(True)
    try:
        out = triton_scan()(**inputs)
        with pytest.raises(NondeterministicError, match="triton backend's selective-scan backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter("test_triton", "interpreter_check")
