"""The `triton` backend's causal conv1d kernels against the float64 reference (and causal-conv1d where installed).

GPU tests are marked `gpu` and skipped without CUDA. Without a GPU, `test_conv_kernels_in_triton_interpreter`
runs the same kernels on tiny shapes in Triton's CPU interpreter, in a subprocess because TRITON_INTERPRET must be
set before triton is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mambakit import ops
from mambakit.ops.reference import causal_conv1d_ref, causal_conv1d_update_ref
from mambakit.ops.timing import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from scan_cases import run_in_triton_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

gpu = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")


def in_layout(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A copy of values (batch, dim, L) laid out as: 'channel_last', x as mamba-ssm's Mamba mixer feeds it (a
    transposed half of in_proj's (batch, L, 2 dim) output, channels contiguous); 'steps', steps contiguous with
    padded rows; 'neither', no unit stride at all."""
    batch, dim, length = values.shape
    if layout == "channel_last":
        view = values.new_empty(batch, length, 2 * dim).transpose(1, 2)[:, :dim]
    elif layout == "steps":
        view = values.new_empty(batch, dim, length + 3)[..., :length]
    else:
        view = values.new_empty(batch, dim, length, 2)[..., 0]
    return view.copy_(values)


def conv_inputs(
    batch: int,
    dim: int,
    length: int,
    width: int,
    dtype: torch.dtype,
    layout: str,
    *,
    bias: bool = True,
    initial: bool = True,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """x and the initial states in `dtype`, weight and bias fp32 (as a module's parameters under autocast)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return {
        "x": in_layout(rand(batch, dim, length).to(device, dtype), layout),
        "weight": (rand(dim, width) * 0.5).to(device, torch.float32),
        "bias": rand(dim).to(device, torch.float32) if bias else None,
        "initial_states": rand(batch, dim, width - 1).to(device, dtype) if initial else None,
    }


def layout_of(x: torch.Tensor) -> str:
    if x.stride(1) == 1 and x.stride(2) != 1:
        return "channel_last"
    return "steps" if x.stride(2) == 1 else "neither"


def conv_with_grads(fn, inputs: dict, activation: str | None, grad_out: torch.Tensor, grad_final: torch.Tensor):
    """out, final states and every input's gradient of fn on leaf copies of inputs (dtypes and layouts kept)."""
    leaves = {k: None if v is None else v.detach().clone() for k, v in inputs.items()}
    leaves["x"] = in_layout(inputs["x"].detach(), layout_of(inputs["x"]))
    for leaf in leaves.values():
        if leaf is not None:
            leaf.requires_grad_()
    out, final = fn(**leaves, activation=activation, return_final_states=True)
    loss = (out.double() * grad_out).sum() + (final.double() * grad_final).sum()
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out, final, dict(zip(names, grads, strict=True))


def errors_vs_reference(fn, inputs: dict, activation: str | None, seed: int = 0) -> dict[str, float]:
    """Relative errors of fn's output, final states and gradients against causal_conv1d_ref in float64 on the
    same (already rounded) inputs; also checks dtypes and that channel-last x gives channel-last out."""
    x = inputs["x"]
    batch, dim, length = x.shape
    width = inputs["weight"].shape[1]
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(batch, dim, length, generator=generator, dtype=torch.float64).to(x.device)
    grad_final = torch.randn(batch, dim, width - 1, generator=generator, dtype=torch.float64).to(x.device)
    exact = {k: None if v is None else v.double() for k, v in inputs.items()}
    ref_out, ref_final, ref_grads = conv_with_grads(causal_conv1d_ref, exact, activation, grad_out, grad_final)
    out, final, grads = conv_with_grads(fn, inputs, activation, grad_out, grad_final)
    assert out.dtype == x.dtype and final.dtype == x.dtype
    if layout_of(x) == "channel_last":
        assert out.stride() == (length * dim, 1, dim), "channel-last x should give a contiguous (batch, L, dim) out"
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, name
        assert torch.isfinite(grad).all(), name
    errors = {"out": relative_error(out, ref_out), "final": relative_error(final, ref_final)}
    errors.update({f"d{name}": relative_error(grad, ref_grads[name]) for name, grad in grads.items()})
    return errors


def triton_conv(config=None):
    from mambakit.ops.triton_conv import causal_conv1d_triton

    def fn(**kwargs):
        return causal_conv1d_triton(**kwargs, config=config)

    return fn


def through_ops(**kwargs):
    return ops.causal_conv1d(**kwargs, backend="triton")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["channel_last", "steps"])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_triton_conv_matches_float64_reference(width, layout, dtype):
    """Every dtype, layout and width, with bias, initial states and silu, at odd L and a channel count that no
    block size divides."""
    inputs = conv_inputs(2, 100, 257, width, dtype, layout, device="cuda", seed=width)
    errors = errors_vs_reference(through_ops, inputs, "silu", seed=1)
    bad = {k: v for k, v in errors.items() if not v < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad}"


# batch, dim, L, width, options: one step, L shorter than the halo, long odd L, several channel blocks, without
# bias, initial states or activation. (Each combination of dtype, layout, width and options is a kernel to
# compile, a few seconds each, so these vary only what the test above holds fixed.)
EDGE_CASES = [
    (2, 5, 1, 4, {}),
    (1, 7, 3, 4, {"bias": False}),
    (2, 333, 1001, 3, {"initial": False}),
    (1, 1536, 300, 4, {"activation": None}),
    (3, 24, 50, 2, {"activation": None, "bias": False, "initial": False}),
]


def case_id(case: tuple) -> str:
    return "x".join(map(str, case[:3])) + f"-w{case[3]}" + "".join(f"-{k}={v}" for k, v in case[4].items())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["channel_last", "steps"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=case_id)
def test_triton_conv_edge_cases(case, layout):
    batch, dim, length, width, options = case
    activation = options.get("activation", "silu")
    inputs = conv_inputs(
        batch,
        dim,
        length,
        width,
        torch.float32,
        layout,
        bias=options.get("bias", True),
        initial=options.get("initial", True),
        device="cuda",
        seed=length,
    )
    errors = errors_vs_reference(through_ops, inputs, activation, seed=dim)
    assert max(errors.values()) < TOLERANCE[torch.float32], errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["channel_last", "steps", "neither"])
@pytest.mark.parametrize("config", [(32, 4, 8, 4, 2), (4, 8, 8, 2, 4), (64, 2, 4, 1, 1), (2, 64, 4, 8, 4)], ids=str)
def test_triton_conv_tile_shapes_do_not_change_results(config, layout):
    from mambakit.ops.triton_conv import ConvConfig

    inputs = conv_inputs(2, 70, 301, 4, torch.float32, layout, device="cuda", seed=5)
    errors = errors_vs_reference(triton_conv(ConvConfig(*config)), inputs, "silu")
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["channel_last", "steps"])
def test_triton_conv_at_mamba_scale(layout):
    """The default tiles at a Mamba layer's size (the steps-contiguous backward then walks several tiles)."""
    inputs = conv_inputs(8, 1536, 2048, 4, torch.bfloat16, layout, initial=False, device="cuda", seed=9)
    errors = errors_vs_reference(through_ops, inputs, "silu")
    assert max(errors.values()) < TOLERANCE[torch.bfloat16], errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width", [2, 3, 4])
def test_triton_conv_pieces_and_steps_equal_one_pass(width, dtype):
    """Final states carried into the next call, and decode steps from them, reproduce the full convolution."""
    inputs = conv_inputs(2, 96, 40, width, dtype, "channel_last", device="cuda", seed=width)
    x, weight, bias, initial = inputs.values()
    whole, whole_final = through_ops(**inputs, activation="silu", return_final_states=True)
    first, carry = through_ops(
        x=x[..., :17], weight=weight, bias=bias, activation="silu", initial_states=initial, return_final_states=True
    )
    second = through_ops(x=x[..., 17:25], weight=weight, bias=bias, activation="silu", initial_states=carry)
    state = carry.clone()
    steps = [ops.causal_conv1d_update(x[..., t], state, weight, bias, "silu", backend="triton") for t in range(17, 40)]
    torch.testing.assert_close(state, whole_final, rtol=0, atol=0)  # copies of inputs
    ref = causal_conv1d_ref(x.double(), weight.double(), bias.double(), "silu", initial.double())
    for name, value in (("pieces", torch.cat([first, second], -1)), ("steps", torch.stack(steps, -1))):
        span = slice(0, 25) if name == "pieces" else slice(17, 40)
        assert relative_error(value, ref[..., span]) < TOLERANCE[dtype], name
        assert relative_error(value, whole[..., span]) < TOLERANCE[dtype], name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("activation", ["silu", None])
def test_triton_conv_update_matches_reference(activation, width, dtype):
    errors = update_errors(3, 1536 + 7, width, dtype, activation, "cuda")
    assert max(errors.values()) < TOLERANCE[dtype], errors


def update_errors(
    batch: int, dim: int, width: int, dtype: torch.dtype, activation: str | None, device: str
) -> dict[str, float]:
    """Five decode steps (x a strided half of an in_proj output, as in the mixer) against the reference in float64:
    each output, then the state."""
    from mambakit.ops.triton_conv import causal_conv1d_update_triton

    g = torch.Generator().manual_seed(width)
    weight = torch.randn(dim, width, generator=g).to(device)
    bias = torch.randn(dim, generator=g).to(device)
    state = torch.randn(batch, dim, width - 1, generator=g).to(device, dtype)
    exact_state, errors = state.double(), {}
    for step in range(5):
        x = torch.randn(batch, 2 * dim, generator=g).to(device, dtype)[:, :dim]
        ref = causal_conv1d_update_ref(x.double(), exact_state, weight.double(), bias.double(), activation)
        out = causal_conv1d_update_triton(x, state, weight, bias, activation)
        assert out.dtype == dtype and state.dtype == dtype
        errors[f"y{step}"] = relative_error(out, ref)
    errors["state"] = relative_error(state, exact_state)
    return errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["channel_last", "steps"])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_triton_conv_matches_causal_conv1d_package(width, layout, dtype):
    pytest.importorskip("causal_conv1d")
    from causal_conv1d import causal_conv1d_fn

    inputs = conv_inputs(2, 256, 777, width, dtype, layout, initial=False, device="cuda", seed=width)
    del inputs["initial_states"]
    grad_out = torch.randn(*inputs["x"].shape, device="cuda", dtype=torch.float64)
    results = []
    for fn in (through_ops, causal_conv1d_fn):
        leaves = {k: in_layout(v.detach(), layout) if k == "x" else v.detach().clone() for k, v in inputs.items()}
        for leaf in leaves.values():
            leaf.requires_grad_()
        out = fn(**leaves, activation="silu")
        grads = torch.autograd.grad((out.double() * grad_out).sum(), list(leaves.values()))
        results.append((out, grads))
    (out, grads), (ref_out, ref_grads) = results
    assert relative_error(out, ref_out) < TOLERANCE[dtype]
    for name, grad, ref in zip(inputs, grads, ref_grads, strict=True):
        assert relative_error(grad, ref) < TOLERANCE[dtype], name


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_float64_and_wide_filters_go_to_the_reference():
    from mambakit.ops.triton_conv import causal_conv1d_triton, causal_conv1d_update_triton

    x, weight, state = torch.randn(2, 3, 9, dtype=torch.float64), torch.randn(3, 6), torch.randn(2, 3, 5)
    out, final = causal_conv1d_triton(x, weight.double(), None, "silu", None, True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, causal_conv1d_ref(x, weight.double(), None, "silu"))
    torch.testing.assert_close(final, x[..., -5:])
    expected = causal_conv1d_update_ref(x[..., 0].float(), state.clone(), weight)
    torch.testing.assert_close(causal_conv1d_update_triton(x[..., 0].float(), state, weight), expected)


def interpreter_check() -> None:
    """Tiny cases through the kernels in Triton's CPU interpreter (run with TRITON_INTERPRET=1; it takes a
    fraction of a second per program, so the grids stay small): both layouts, two channel blocks x two programs
    along L x two runs each, a backward walking several tiles, L shorter than the halo, widths 1 to 4, optional
    inputs off; forward, final states and every gradient within 1e-5 of float64; then decode steps."""
    from mambakit.ops.triton_conv import ConvConfig

    two_blocks_two_runs = ConvConfig(block_d=4, lanes=2, steps=4, warps=1)
    # 3 tiles, the backward's second program walking past L
    two_blocks_two_tiles = ConvConfig(block_d=4, lanes=1, steps=4, warps=1, bwd_tiles=2)
    one_program = ConvConfig(block_d=8, lanes=4, steps=4, warps=1)
    cases = [
        (1, 5, 11, 4, "channel_last", "silu", {}, two_blocks_two_runs),
        (1, 5, 11, 3, "steps", "silu", {}, two_blocks_two_runs),
        (1, 5, 11, 4, "steps", "silu", {}, two_blocks_two_tiles),
        (2, 3, 2, 4, "steps", "silu", {}, one_program),
        (1, 6, 9, 2, "steps", None, {"bias": False, "initial": False}, one_program),
        (1, 6, 9, 1, "channel_last", "silu", {}, one_program),
    ]
    for batch, dim, length, width, layout, activation, options, config in cases:
        inputs = conv_inputs(batch, dim, length, width, torch.float32, layout, seed=length + width, **options)
        errors = errors_vs_reference(triton_conv(config), inputs, activation)
        bad = {k: v for k, v in errors.items() if not v < 1e-5}
        assert not bad, f"{layout} {batch}x{dim}x{length} width {width}: relative errors over 1e-5: {bad}"
    for width in (1, 4):
        errors = update_errors(2, 37, width, torch.float32, "silu", "cpu")
        assert max(errors.values()) < 1e-5, f"update, width {width}: {errors}"


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_conv_kernels_in_triton_interpreter():
    run_in_triton_interpreter("test_triton_conv", "interpreter_check")
