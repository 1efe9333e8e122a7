"""Every usable scan backend against the float64 reference: forward, last state and every gradient."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from scan_cases import CASES, run_in_triton_interpreter, scan_inputs

from mambakit import ops
from mambakit.ops.reference import causal_conv1d_ref, selective_scan_ref, selective_state_update_ref
from mambakit.ops.timing import relative_error
from mambakit.ops.torch_scan import selective_scan_torch

FP32_TOL = 1e-5
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run_with_grads(fn, inputs, dtype, grad_out, grad_state):
    """Call fn on copies of inputs cast to dtype; return out, last state and every input's gradient (through the
    last state too unless `grad_state` is None)."""
    leaves = {k: (v.detach().to(dtype).requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    loss = (out.double() * grad_out).sum()
    if grad_state is not None:
        loss = loss + (last.double() * grad_state).sum()
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out, last, dict(zip(names, grads, strict=True))


def assert_matches_reference(fn, inputs, tol=FP32_TOL, dtype=torch.float32, last_state_gradient=True):
    ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    grad_out, grad_state = torch.randn_like(ref_out), torch.randn_like(ref_last) if last_state_gradient else None
    _, _, ref_grads = run_with_grads(selective_scan_ref, inputs, torch.float64, grad_out, grad_state)
    out, last, grads = run_with_grads(fn, inputs, dtype, grad_out, grad_state)
    assert out.dtype == dtype
    assert last.dtype == torch.float32
    assert relative_error(out, ref_out) < tol
    assert relative_error(last, ref_last) < tol
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert relative_error(grad, ref_grads[name]) < tol, f"gradient of {name}"


def usable_backends(device: str) -> list[str]:
    return [name for name, reason in ops.available_backends(device).items() if reason is None and name != "reference"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}")
def test_backends_match_float64_reference(device, case):
    batch, dim, d_state, length, layout, options = case
    for backend in usable_backends(device):
        if backend == "mamba_ssm" and options.get("initial", True):
            continue  # refused, tested below
        inputs = scan_inputs(batch, dim, d_state, length, layout, device=device, seed=length, **options)

        def fn(backend=backend, **kwargs):
            return ops.selective_scan(**kwargs, backend=backend)

        # mamba-ssm has no gradient through the last state (test_mamba_ssm_backend_refuses_a_gradient_through_...).
        assert_matches_reference(fn, inputs, last_state_gradient=backend != "mamba_ssm")


@pytest.mark.parametrize("chunk_size", [1, 5, 16])
@pytest.mark.parametrize("layout", ["shared", "grouped:2", "time_invariant"])
def test_torch_backend_across_chunk_boundaries(chunk_size, layout):
    inputs = scan_inputs(2, 6, 4, 41, layout, seed=chunk_size)
    assert_matches_reference(lambda **kw: selective_scan_torch(**kw, chunk_size=chunk_size), inputs)


def test_torch_backend_float64_is_exact():
    inputs = scan_inputs(2, 4, 3, 29, "shared", seed=3)
    out = ops.selective_scan(**inputs, delta_softplus=True, backend="torch")
    assert relative_error(out, selective_scan_ref(**inputs, delta_softplus=True)) < 1e-12


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_scanning_in_two_pieces_equals_one_pass(backend):
    inputs = scan_inputs(2, 6, 4, 50, "shared", seed=7)
    grad_out = torch.randn(2, 6, 50, dtype=torch.float64)

    def whole(**kw):
        return ops.selective_scan(**kw, delta_softplus=True, backend=backend, return_last_state=True)

    def pieces(**kw):
        cut = 23
        first = {k: (v[..., :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        second = {k: (v[..., cut:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        second["initial_state"] = None
        out1, state = ops.selective_scan(**first, delta_softplus=True, backend=backend, return_last_state=True)
        second["initial_state"] = state
        out2, last = ops.selective_scan(**second, delta_softplus=True, backend=backend, return_last_state=True)
        return torch.cat([out1, out2], dim=-1), last

    results = []
    for fn in (whole, pieces):
        leaves = {k: v.detach().float().requires_grad_() for k, v in inputs.items()}
        out, last = fn(**leaves)
        grads = torch.autograd.grad((out.double() * grad_out).sum() + last.double().sum(), list(leaves.values()))
        results.append((out, last, grads))
    (out_a, last_a, grads_a), (out_b, last_b, grads_b) = results
    assert relative_error(out_b, out_a) < FP32_TOL
    assert relative_error(last_b, last_a) < FP32_TOL
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        assert relative_error(grad_b, grad_a) < FP32_TOL


def test_stable_for_long_sequences_and_large_decays():
    inputs = scan_inputs(1, 4, 4, 3000, "shared", seed=11)
    inputs["delta"] = inputs["delta"].abs() * 40  # |delta * A| up to ~100: decays underflow to 0, never overflow
    assert_matches_reference(lambda **kw: ops.selective_scan(**kw, backend="torch"), inputs)


def test_bf16_inputs_keep_fp32_state():
    inputs = scan_inputs(2, 8, 4, 30, "shared", seed=5)
    low = {k: v.to(torch.bfloat16) if k in ("u", "delta", "z", "B", "C") else v.float() for k, v in inputs.items()}
    out, last = ops.selective_scan(**low, delta_softplus=True, return_last_state=True, backend="torch")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    ref = selective_scan_ref(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
    assert relative_error(out, ref) < 1e-2


@pytest.mark.parametrize("b_layout", ["shared", "grouped:2"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_state_update_equals_one_scan_step(backend, b_layout):
    inputs = scan_inputs(3, 8, 4, 1, b_layout, seed=2)
    out = selective_scan_ref(**inputs, delta_softplus=True)
    state = inputs["initial_state"].clone()
    step = ops.selective_state_update(
        state,
        inputs["u"][..., 0],
        inputs["delta"][..., 0],
        inputs["A"],
        inputs["B"][..., 0],
        inputs["C"][..., 0],
        inputs["D"],
        inputs["z"][..., 0],
        inputs["delta_bias"],
        dt_softplus=True,
        backend=backend,
    )
    _, last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert relative_error(step, out[..., 0]) < 1e-12
    assert relative_error(state, last) < 1e-12


def test_causal_conv1d_pieces_and_steps_equal_one_pass():
    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 17, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    whole = ops.causal_conv1d(x, weight, bias, "silu")
    first, carry = ops.causal_conv1d(x[..., :9], weight, bias, "silu", return_final_states=True)
    second = ops.causal_conv1d(x[..., 9:], weight, bias, "silu", initial_states=carry)
    torch.testing.assert_close(torch.cat([first, second], -1), whole)
    state = torch.zeros(2, 5, 3)
    steps = torch.stack([ops.causal_conv1d_update(x[..., t], state, weight, bias, "silu") for t in range(17)], -1)
    torch.testing.assert_close(steps, whole)
    # matches a plain padded convolution
    expected = torch.nn.functional.silu(
        torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 0)), weight[:, None], bias, groups=5)
    )
    torch.testing.assert_close(causal_conv1d_ref(x, weight, bias, "silu"), expected)


def test_bad_shapes_name_the_argument():
    inputs = {k: v.float() for k, v in scan_inputs(2, 8, 4, 10, "shared").items()}
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, dim, L\)"):
        ops.selective_scan(**{**inputs, "delta": inputs["delta"][..., :5]})
    with pytest.raises(ValueError, match=r"A must have shape \(dim, N\)"):
        ops.selective_scan(**{**inputs, "A": inputs["A"][:3]})
    with pytest.raises(ValueError, match="group count"):
        ops.selective_scan(**{**inputs, "B": torch.randn(2, 3, 4, 10), "C": torch.randn(2, 3, 4, 10)})
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ops.selective_scan(**{**inputs, "initial_state": torch.randn(2, 8, 5)})
    with pytest.raises(ValueError, match="floating-point"):
        ops.selective_scan(**{**inputs, "u": inputs["u"].long()})


def test_unknown_backend_lists_the_known_ones():
    inputs = {k: v.float() for k, v in scan_inputs(1, 4, 2, 5, "shared").items()}
    with pytest.raises(ValueError, match="auto, mamba_ssm, triton, cuda, torch, reference"):
        ops.selective_scan(**inputs, backend="cuda_fast")


@pytest.mark.parametrize("backend", ["cuda", "triton", "mamba_ssm"])
def test_gpu_backends_on_cpu_tensors_say_why(backend):
    inputs = {k: v.float() for k, v in scan_inputs(1, 4, 2, 5, "shared").items()}
    with pytest.raises(ops.BackendUnavailableError, match="backend='torch'"):
        ops.selective_scan(**inputs, backend=backend)
    assert "backend='torch'" in ops.available_backends("cpu")[backend]


def test_environment_variable_picks_the_backend(monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "reference")
    assert ops.resolve_backend("auto", torch.device("cpu")).name == "reference"
    monkeypatch.setenv(ops.ENV_VAR, "")
    assert ops.resolve_backend("auto", torch.device("cpu")).name == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mamba_ssm_backend_refuses_initial_state():
    if ops.available_backends("cuda")["mamba_ssm"] is not None:
        pytest.skip("mamba-ssm is not installed")
    inputs = {k: v.float() for k, v in scan_inputs(1, 4, 2, 5, "shared", device="cuda").items()}
    with pytest.raises(ops.BackendUnavailableError, match="initial_state"):
        ops.selective_scan(**inputs, backend="mamba_ssm")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mamba_ssm_backend_refuses_a_gradient_through_the_last_state():
    if ops.available_backends("cuda")["mamba_ssm"] is not None:
        pytest.skip("mamba-ssm is not installed")
    inputs = scan_inputs(1, 4, 2, 5, "shared", device="cuda", initial=False)
    leaves = {k: v.float().requires_grad_() for k, v in inputs.items()}
    out, last = ops.selective_scan(**leaves, backend="mamba_ssm", return_last_state=True)
    with pytest.raises(ops.BackendUnavailableError, match="cannot backpropagate through the returned last state"):
        (out.sum() + last.sum()).backward()


def test_auto_passes_over_backends_that_lack_a_needed_feature(monkeypatch):
    from mambakit.ops import backends

    limited = backends.Backend(
        "limited",
        "test double",
        lambda device: None,
        {"selective_scan": ".reference:selective_scan_ref"},
        lacks=frozenset({"initial_state"}),
    )
    monkeypatch.setattr(backends, "_REGISTRY", {"limited": limited, **backends._REGISTRY})
    cpu = torch.device("cpu")
    assert ops.resolve_backend("auto", cpu).name == "limited"
    assert ops.resolve_backend("auto", cpu, needs=frozenset({"initial_state"})).name == "torch"
    with pytest.raises(ops.BackendUnavailableError, match="has no initial_state"):
        ops.resolve_backend("limited", cpu, needs=frozenset({"initial_state"}))


def test_auto_picks_a_backend_only_for_its_auto_ops(monkeypatch):
    from mambakit.ops import backends

    scan_only = backends.Backend(
        "scan_only",
        "test double",
        lambda device: None,
        {
            "selective_scan": ".reference:selective_scan_ref",
            "selective_state_update": ".reference:selective_state_update_ref",
        },
        auto_ops=frozenset({"selective_scan"}),
    )
    monkeypatch.setattr(backends, "_REGISTRY", {"scan_only": scan_only, **backends._REGISTRY})
    cpu = torch.device("cpu")
    assert ops.resolve_backend("auto", cpu, "selective_scan").name == "scan_only"
    assert ops.resolve_backend("auto", cpu, "selective_state_update").name == "torch"
    assert ops.resolve_backend("scan_only", cpu, "selective_state_update").name == "scan_only"


def test_an_op_the_named_backend_lacks_runs_where_auto_runs_it(monkeypatch):
    """`cuda` has only the scan: asked for by name, its model's conv and norm run where `auto` runs them (Triton on
    a GPU), not on the pure-PyTorch fallback."""
    from mambakit.ops import backends

    def double(name: str, ops_: dict[str, str], auto_ops: frozenset[str] | None = None) -> backends.Backend:
        return backends.Backend(name, "test double", lambda device: None, ops_, auto_ops=auto_ops)

    fast = double("fast", {"causal_conv1d": ".reference:causal_conv1d_ref"})
    scan_only = double("scan_only", {"selective_scan": ".reference:selective_scan_ref"})
    registry = {"scan_only": scan_only, "fast": fast, **backends._REGISTRY}
    monkeypatch.setattr(backends, "_REGISTRY", registry)
    cpu = torch.device("cpu")
    assert ops.resolve_backend("scan_only", cpu, "causal_conv1d").name == "fast"
    assert ops.resolve_backend("scan_only", cpu, "selective_state_update").name == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "scan_only")  # auto's own pick does not loop back to the named backend
    assert ops.resolve_backend("scan_only", cpu, "causal_conv1d").name == "fast"


@pytest.fixture
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) for the test, put back afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_auto_passes_over_atomic_backwards_under_deterministic_algorithms(monkeypatch, deterministic_algorithms):
    from mambakit.ops import backends

    atomic = backends.Backend(
        "atomic",
        "test double",
        lambda device: None,
        {"selective_scan": ".reference:selective_scan_ref"},
        nondeterministic=frozenset({"selective_scan"}),
    )
    monkeypatch.setattr(backends, "_REGISTRY", {"atomic": atomic, **backends._REGISTRY})
    cpu = torch.device("cpu")
    assert ops.resolve_backend("auto", cpu).name == "torch"
    with torch.no_grad():  # no backward to run: its forward is as deterministic as any
        assert ops.resolve_backend("auto", cpu).name == "atomic"
    torch.use_deterministic_algorithms(False)
    assert ops.resolve_backend("auto", cpu).name == "atomic"


def test_an_atomic_backward_under_deterministic_algorithms_raises_or_warns(deterministic_algorithms):
    from mambakit.ops.backends import NondeterministicError, alert_not_deterministic

    with pytest.raises(NondeterministicError, match="the op adds with atomics.*use backend='torch'"):
        alert_not_deterministic("the op", "use backend='torch'")
    torch.use_deterministic_algorithms(True, warn_only=True)
    with pytest.warns(UserWarning, match="the op adds with atomics"):
        alert_not_deterministic("the op", "use backend='torch'")
    torch.use_deterministic_algorithms(False)
    alert_not_deterministic("the op", "use backend='torch'")


# B and C each in their own layout, as mamba-ssm takes them: one time-invariant (dim, N), the other per step.
MIXED_LAYOUTS = [
    ("time_invariant", "shared"),
    ("shared", "time_invariant"),
    ("time_invariant", "grouped:3"),
    ("grouped:2", "time_invariant"),
]
HAS_TRITON = importlib.util.find_spec("triton") is not None
triton_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and triton")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layouts", MIXED_LAYOUTS, ids="B-{0[0]}-C-{0[1]}".format)
def test_backends_take_a_time_invariant_B_or_C_beside_a_per_step_one(device, layouts):
    b_layout, c_layout = layouts
    for backend in usable_backends(device):
        if backend == "mamba_ssm":
            continue  # no initial state, no gradient through the last one: test_gpu_backends_take_mixed_layouts
        inputs = scan_inputs(2, 6, 4, 29, b_layout, c_layout=c_layout, device=device)

        def fn(backend=backend, **kwargs):
            return ops.selective_scan(**kwargs, backend=backend)

        assert_matches_reference(fn, inputs)


def test_the_reference_scans_a_mixed_layout_as_its_per_channel_expansion():
    """A time-invariant B is the per-step B whose every channel is its own group, constant over time; C in 3 groups
    is C repeated over each group's 2 channels: the oracle gives the mixed call the expanded call's result."""
    inputs = scan_inputs(2, 6, 4, 17, "time_invariant", c_layout="grouped:3", seed=4)
    expanded = {
        **inputs,
        "B": inputs["B"][None, :, :, None].expand(2, 6, 4, 17),
        "C": inputs["C"].repeat_interleave(2, dim=1),
    }
    mixed_out, mixed_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    out, last = selective_scan_ref(**expanded, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(mixed_out, out, rtol=1e-13, atol=0)
    torch.testing.assert_close(mixed_last, last, rtol=1e-13, atol=0)


def test_per_step_B_and_C_in_different_group_counts_are_refused():
    inputs = scan_inputs(2, 8, 4, 10, "grouped:2", c_layout="grouped:4")
    with pytest.raises(ValueError, match=r"B and C vary per step in different channel groups \(B \(2, 2, 4, 10\), C"):
        ops.selective_scan(**inputs)


def low_precision(inputs: dict, dtype: torch.dtype) -> dict:
    """The scan's inputs as a Mamba layer feeds them: u, delta, z and a per-step B or C in `dtype`, the rest fp32."""
    per_step = {"u", "delta", "z"} | {name for name in ("B", "C") if inputs[name].dim() > 2}
    return {k: v.to(dtype if k in per_step else torch.float32) for k, v in inputs.items()}


@pytest.mark.gpu
@triton_gpu
@pytest.mark.parametrize("backend", ["triton", "cuda", "mamba_ssm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layouts", MIXED_LAYOUTS, ids="B-{0[0]}-C-{0[1]}".format)
def test_gpu_backends_take_mixed_layouts(layouts, dtype, backend):
    """Every GPU backend, in fp32 and bf16, output, last state and gradients: the cuda backend hands mixed layouts
    to the Triton kernels, mamba_ssm to its own kernel (or Triton's, for a time-invariant B beside a C in several
    groups, and for the last state after a time-invariant B, which mamba-ssm's kernel gets wrong)."""
    reason = ops.available_backends("cuda")[backend]
    if reason is not None:
        pytest.skip(reason)
    inputs = scan_inputs(2, 96, 16, 700, layouts[0], c_layout=layouts[1], device="cuda", initial=backend != "mamba_ssm")
    ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    grad_out = torch.randn_like(ref_out)
    _, _, ref_grads = run_with_grads(selective_scan_ref, inputs, torch.float64, grad_out, torch.zeros_like(ref_last))
    leaves = {k: v.detach().requires_grad_() for k, v in low_precision(inputs, dtype).items()}
    out, last = ops.selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    grads = torch.autograd.grad((out.double() * grad_out).sum(), list(leaves.values()))
    tolerance = FP32_TOL if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and relative_error(out, ref_out) < tolerance
    assert last.dtype == torch.float32 and relative_error(last, ref_last) < tolerance
    for name, grad in zip(leaves, grads, strict=True):
        assert grad.dtype == leaves[name].dtype, name
        assert relative_error(grad, ref_grads[name]) < tolerance, f"gradient of {name}"


def step_inputs(batch: int, dim: int, d_state: int, groups: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """x, dt, A, B, C, D, z, dt_bias of one decode step, fp32 (B, C in `groups` groups, or (batch, N) for 1)."""
    g = torch.Generator().manual_seed(seed)
    bc = (batch, groups, d_state) if groups > 1 else (batch, d_state)
    tensors = [
        torch.randn(batch, dim, generator=g),
        torch.randn(batch, dim, generator=g) * 0.5,
        -torch.rand(dim, d_state, generator=g) - 0.1,
        torch.randn(*bc, generator=g),
        torch.randn(*bc, generator=g),
        torch.randn(dim, generator=g),
        torch.randn(batch, dim, generator=g),
        torch.randn(dim, generator=g) * 0.3,
    ]
    return [t.to(device) for t in tensors]


def check_half_precision_state_step(step, dtype: torch.dtype, device: str) -> None:
    """A decode step on a state kept in `dtype`: updated in place and stored in `dtype` (within its rounding of the
    exact new state), y computed in fp32 from the unrounded new state (within 1e-5 of float64)."""
    inputs = step_inputs(3, 40, 5, 2, device, seed=7)
    state = torch.randn(3, 40, 5, generator=torch.Generator().manual_seed(8)).to(device, dtype)
    storage = state.data_ptr()
    exact_state = state.double()
    exact_y = selective_state_update_ref(exact_state, *(t.double() for t in inputs), dt_softplus=True)
    y = step(state, *inputs, dt_softplus=True)
    assert state.dtype == dtype and state.data_ptr() == storage
    assert relative_error(state, exact_state) < torch.finfo(dtype).eps
    assert y.dtype == torch.float32 and relative_error(y, exact_y) < FP32_TOL


def check_indexed_state_step(step, device: str) -> None:
    """With state_batch_indices the step updates those rows of a cache: the others are untouched, a negative index
    (padding) touches nothing and gives 0, the named rows get what a plain step on them gives."""
    inputs = step_inputs(3, 40, 5, 1, device, seed=9)
    cache = torch.randn(7, 40, 5, generator=torch.Generator().manual_seed(10)).to(device)
    before = cache.clone()
    indices = torch.tensor([4, -1, 0], dtype=torch.int32, device=device)
    y = step(cache, *inputs, dt_softplus=True, state_batch_indices=indices)
    rows = before[[4, 0, 0]].double()
    exact_y = selective_state_update_ref(rows, *(t.double() for t in inputs), dt_softplus=True)
    assert torch.equal(cache[[1, 2, 3, 5, 6]], before[[1, 2, 3, 5, 6]])
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    assert relative_error(cache[[4, 0]], rows[[0, 2]]) < FP32_TOL
    assert relative_error(y[[0, 2]], exact_y[[0, 2]]) < FP32_TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_state_update_keeps_a_half_precision_state(backend, dtype):
    check_half_precision_state_step(functools.partial(ops.selective_state_update, backend=backend), dtype, "cpu")


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_state_update_of_cache_rows_named_by_state_batch_indices(backend):
    check_indexed_state_step(functools.partial(ops.selective_state_update, backend=backend), "cpu")


@pytest.mark.gpu
@triton_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_state_update_keeps_a_half_precision_state(dtype):
    check_half_precision_state_step(functools.partial(ops.selective_state_update, backend="triton"), dtype, "cuda")
    check_indexed_state_step(functools.partial(ops.selective_state_update, backend="triton"), "cuda")


def interpreter_check_mixed_layouts_and_half_states() -> None:
    """The Triton kernels in Triton's CPU interpreter (run with TRITON_INTERPRET=1): mixed B/C layouts over several
    channel blocks and tiles, forward and every gradient; the decode step with fp16/bf16 states and cache rows."""
    from mambakit.ops.triton_scan import ScanConfig, selective_scan_triton
    from mambakit.ops.triton_step import selective_state_update_triton

    config = ScanConfig(fwd_block_d=2, fwd_block_l=8, bwd_block_d=2, bwd_block_l=16)
    for b_layout, c_layout in MIXED_LAYOUTS:
        inputs = scan_inputs(2, 6, 3, 21, b_layout, c_layout=c_layout, seed=3)
        assert_matches_reference(functools.partial(selective_scan_triton, config=config), inputs)
    for dtype in (torch.float16, torch.bfloat16):
        check_half_precision_state_step(selective_state_update_triton, dtype, "cpu")
    check_indexed_state_step(selective_state_update_triton, "cpu")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_mixed_layouts_and_half_states_in_triton_interpreter():
    run_in_triton_interpreter("test_ops", "interpreter_check_mixed_layouts_and_half_states")
