"""VMamba's 2-D cross-scan and cross-merge: the reference's properties on the CPU, and the `triton` backend's
kernels against the reference, forward and backward.

GPU tests are marked `gpu` and skipped without CUDA. Without a GPU, `test_cross_scan_kernels_in_triton_interpreter`
runs the same kernels on small shapes in Triton's CPU interpreter, in a subprocess because TRITON_INTERPRET must be
set before triton is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mambakit import ops
from mambakit.ops.reference import cross_merge_ref, cross_scan_ref

sys.path.insert(0, str(Path(__file__).parent))
from scan_cases import run_in_triton_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
CPU_BACKENDS = ["torch", "reference"]

gpu = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device, dtype)


# ---- the reference (torch and reference backends) ----


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_merge_of_scan_is_four_times_the_input(backend):
    x = randn(2, 3, 5, 7)
    merged = ops.cross_merge(ops.cross_scan(x, backend=backend), 5, 7, backend=backend)
    torch.testing.assert_close(merged, 4 * x, rtol=0, atol=0)


# x[0, d, h, w] = 10 d + (h W + w) for H = 2, W = 3: each direction of each channel written out by hand.
BY_HAND = {
    0: [0, 1, 2, 3, 4, 5],  # row-major: (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    1: [0, 3, 1, 4, 2, 5],  # column-major: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2)
    2: [5, 4, 3, 2, 1, 0],  # row-major reversed
    3: [5, 2, 4, 1, 3, 0],  # column-major reversed
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cross_scan_index_mapping_by_hand(backend):
    x = (torch.arange(2)[:, None] * 10 + torch.arange(6)).reshape(1, 2, 2, 3).double()
    out = ops.cross_scan(x, backend=backend)
    assert out.shape == (1, 4, 2, 6)
    for k, order in BY_HAND.items():
        for d in range(2):
            assert out[0, k, d].tolist() == [10 * d + i for i in order], (k, d)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cross_merge_sends_each_value_to_its_position(backend):
    """A one-hot y at direction k, step l lands at the position the scan took it from (the hand table again)."""
    for k, order in BY_HAND.items():
        for step, position in enumerate(order):
            y = torch.zeros(1, 4, 1, 6, dtype=torch.float64)
            y[0, k, 0, step] = 1.0
            expected = torch.zeros(6, dtype=torch.float64)
            expected[position] = 1.0
            merged = ops.cross_merge(y, 2, 3, backend=backend)
            assert torch.equal(merged.reshape(6), expected), (k, step)


def test_gradcheck_on_the_torch_backend():
    x = randn(2, 3, 3, 4).requires_grad_()
    y = randn(2, 4, 3, 12, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.cross_scan(t, backend="torch"), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.cross_merge(t, 3, 4, backend="torch"), (y,))
    assert torch.autograd.gradgradcheck(lambda t: ops.cross_merge(t, 3, 4, backend="torch"), (y,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 1), (3, 2, 4, 4)], ids=str)
def test_cross_merge_is_the_adjoint_of_cross_scan(shape, backend):
    batch, dim, height, width = shape
    x = randn(*shape, seed=2)
    y = randn(batch, 4, dim, height * width, seed=3)
    left = (ops.cross_scan(x, backend=backend) * y).sum()
    right = (x * ops.cross_merge(y, height, width, backend=backend)).sum()
    torch.testing.assert_close(left, right, rtol=1e-12, atol=0)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="batch, dim, H, W"):
        ops.cross_scan(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="batch, 4, dim"):
        ops.cross_merge(torch.zeros(2, 4, 3, 11), 3, 4)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_triton_backend_registers_both_ops():
    from mambakit.ops.backends import _REGISTRY
    from mambakit.ops.triton_cross_scan import cross_merge_triton, cross_scan_triton

    assert _REGISTRY["triton"].load("cross_scan") is cross_scan_triton
    assert _REGISTRY["triton"].load("cross_merge") is cross_merge_triton


# ---- the Triton kernels (in the interpreter without a GPU, on CUDA with one) ----


def check_triton_ops(x: torch.Tensor, config: object = None, seed: int = 0) -> None:
    """Both Triton ops on x's device, dtype and layout against the reference: cross_scan and the gradient of a
    cross_merge (pure copies) bit-equal; cross_merge and cross_scan's gradient (a sum of four, fp32 inside) equal
    to the float64 reference rounded to the dtype, within the dtype's assert_close tolerance (bit-equal in fp32,
    where the kernel adds in the reference's order). Checks dtypes, contiguity, and that channels-last x gets a
    channels-last gradient."""
    from mambakit.ops.triton_cross_scan import cross_merge_triton, cross_scan_triton

    batch, dim, height, width = x.shape
    dtype, device = x.dtype, str(x.device)
    leaf = x.detach().requires_grad_()
    out = cross_scan_triton(leaf, config=config)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (batch, 4, dim, height * width)
    assert torch.equal(out, cross_scan_ref(x)), "cross_scan forward"
    grad_out = randn(batch, 4, dim, height * width, seed=seed, dtype=dtype, device=device)
    (dx,) = torch.autograd.grad(out, leaf, grad_out)
    assert dx.dtype == dtype
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert dx.is_contiguous(memory_format=torch.channels_last), "channels-last x, channels-last dx"
    else:
        assert dx.is_contiguous()
    expected_dx = cross_merge_ref(grad_out.double(), height, width).to(dtype)
    torch.testing.assert_close(dx, expected_dx, msg="cross_scan backward")

    y = grad_out.detach().requires_grad_()
    merged = cross_merge_triton(y, height, width, config=config)
    assert merged.dtype == dtype and merged.is_contiguous() and merged.shape == x.shape
    torch.testing.assert_close(merged, cross_merge_ref(y.detach().double(), height, width).to(dtype))
    if dtype == torch.float32:
        assert torch.equal(merged, cross_merge_ref(y.detach(), height, width)), "fp32 merge in the reference's order"
    grad_merged = randn(batch, dim, height, width, seed=seed + 1, dtype=dtype, device=device)
    (dy,) = torch.autograd.grad(merged, y, grad_merged)
    assert dy.dtype == dtype and torch.equal(dy, cross_scan_ref(grad_merged)), "cross_merge backward"


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# batch, dim, H, W: odd and unequal sides, a channel count that is no power of two, a single pixel, one row.
INTERPRETER_SHAPES = [(2, 3, 5, 7), (1, 6, 7, 5), (2, 5, 9, 4), (1, 2, 1, 1), (1, 3, 1, 6)]


def interpreter_check() -> None:
    """Run with TRITON_INTERPRET=1: the kernels on small shapes, fp32 and bf16, contiguous and channels-last x,
    default tiles and (fp32) a small tile (several tiles along H, W and the channels, the last ones partly
    masked); then fp16, float64 and double backward."""
    from mambakit.ops.triton_cross_scan import CrossScanConfig, cross_merge_triton, cross_scan_triton

    small = CrossScanConfig(block_d=2, block_h=4, block_w=2, warps=1)
    for i, shape in enumerate(INTERPRETER_SHAPES):
        for dtype in (torch.float32, torch.bfloat16):
            x = randn(*shape, seed=i, dtype=dtype)
            for layout in (x, channels_last(x)):
                check_triton_ops(layout, seed=i)
                if dtype == torch.float32:
                    check_triton_ops(layout, small, seed=i)
    x = randn(2, 3, 3, 5, seed=7, dtype=torch.float16)
    check_triton_ops(x)
    check_triton_ops(randn(2, 3, 3, 5, seed=7))  # float64
    # Double backward: the scan's backward is a merge, itself differentiable.
    x = randn(1, 2, 3, 5, seed=8, dtype=torch.float32).requires_grad_()
    grad = randn(1, 4, 2, 15, seed=9, dtype=torch.float32).requires_grad_()
    (dx,) = torch.autograd.grad(cross_scan_triton(x), x, grad, create_graph=True)
    (ddx,) = torch.autograd.grad((dx * dx).sum(), grad)
    torch.testing.assert_close(ddx, cross_scan_ref(2 * cross_merge_ref(grad.detach(), 3, 5)), rtol=0, atol=0)
    merged = cross_merge_triton(grad, 3, 5)
    torch.testing.assert_close(merged, dx, rtol=0, atol=0)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_cross_scan_kernels_in_triton_interpreter():
    run_in_triton_interpreter("test_cross_scan", "interpreter_check")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [*INTERPRETER_SHAPES, (2, 96, 14, 14), (2, 768, 7, 7), (3, 40, 33, 65)], ids=str)
def test_triton_cross_scan_on_cuda(shape, layout, dtype):
    x = randn(*shape, seed=sum(shape), dtype=dtype, device="cuda")
    check_triton_ops(channels_last(x) if layout == "channels_last" else x, seed=shape[1])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_cross_scan_at_vmamba_scale(layout):
    """VMamba-T's first stage: B8, D192, 56 x 56, bf16."""
    x = randn(8, 192, 56, 56, seed=1, dtype=torch.bfloat16, device="cuda")
    check_triton_ops(channels_last(x) if layout == "channels_last" else x, seed=2)


@pytest.mark.gpu
@gpu
def test_triton_cross_scan_tile_shapes_and_strided_inputs():
    from mambakit.ops.triton_cross_scan import CrossScanConfig

    x = randn(2, 37, 19, 23, seed=3, dtype=torch.float32, device="cuda")
    for tile in [(1, 1, 1, 1), (4, 8, 8, 2), (64, 4, 4, 4), (1, 32, 32, 8), (8, 2, 16, 4)]:
        check_triton_ops(x, CrossScanConfig(*tile), seed=4)
    check_triton_ops(x[:, ::2], seed=5)  # neither layout: strides taken as they are
    check_triton_ops(x.transpose(2, 3), seed=6)


@pytest.mark.gpu
@gpu
def test_auto_picks_triton_for_cuda_tensors(monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    device = torch.device("cuda")
    assert ops.resolve_backend("auto", device, "cross_scan").name == "triton"
    assert ops.resolve_backend("auto", device, "cross_merge").name == "triton"
    x = randn(2, 8, 5, 6, seed=5, dtype=torch.float32, device="cuda")
    torch.testing.assert_close(ops.cross_scan(x, backend="triton"), cross_scan_ref(x), rtol=0, atol=0)
    y = cross_scan_ref(x)
    torch.testing.assert_close(ops.cross_merge(y, 5, 6, backend="triton"), 4 * x, rtol=0, atol=0)
