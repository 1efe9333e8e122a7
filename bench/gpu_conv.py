"""Check, then time, mambakit's Triton causal conv1d beside the causal-conv1d package's CUDA kernels on one GPU.

    python bench/gpu_conv.py [--sweep]

At B8 D1536 L2048, width 4, bf16 x with fp32 weight and bias (a Mamba layer's parameters under autocast), silu;
x is half of an in_proj output, either channel-last (a transposed half of a (batch, L, 2 dim) tensor, as
mamba-ssm's mixer makes it) or with contiguous steps (a half of a (batch, 2 dim, L) tensor); the upstream
gradient is contiguous in the same axis as x. First the relative error of the output and of every
gradient (x, weight, bias) against the float64 reference on the same inputs, then triton.testing.do_bench
medians of the forward (no autograd) and of forward+backward. `bench/gpu.py` calls `bench_conv()`; run alone,
this prints the table. With --sweep, the Triton kernels' tile shapes are timed too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from triton.testing import do_bench

from mambakit.ops.reference import causal_conv1d_ref
from mambakit.ops.timing import relative_error
from mambakit.ops.triton_conv import ConvConfig, causal_conv1d_triton

SHAPE = (8, 1536, 2048, 4)  # batch, dim, L, width
LAYOUTS = ("channel_last", "steps")
# Tile shapes (block_d, lanes, steps, warps, bwd_tiles) for --sweep; the first of each is the default here.
SWEEP = {
    "channel_last": [
        (256, 1, 32, 2, 1),
        (256, 1, 32, 4, 1),
        (512, 1, 32, 4, 1),
        (256, 1, 16, 2, 1),
        (128, 1, 32, 4, 1),
        (256, 1, 64, 2, 1),
        (512, 1, 16, 4, 1),
        (64, 4, 16, 2, 1),
    ],
    "steps": [
        (8, 32, 8, 4, 4),
        (8, 32, 8, 4, 1),
        (8, 32, 8, 4, 2),
        (16, 16, 8, 4, 4),
        (4, 32, 8, 4, 4),
        (16, 32, 8, 4, 2),
        (8, 16, 8, 2, 4),
    ],
}


def shape_name() -> str:
    return "B{} D{} L{} W{}".format(*SHAPE)


def in_layout(values: torch.Tensor, layout: str, half: bool = True) -> torch.Tensor:
    """values (batch, dim, L) copied into a channel-last view of a (batch, L, 2 dim) tensor, or a view of a
    (batch, 2 dim, L) one with contiguous steps; the first half of the wider tensor when `half`, else all of it."""
    batch, dim, length = values.shape
    wide = 2 * dim if half else dim
    if layout == "steps":
        return values.new_empty(batch, wide, length)[:, :dim].copy_(values)
    return values.new_empty(batch, length, wide).transpose(1, 2)[:, :dim].copy_(values)


def conv_inputs(layout: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """x (bf16, half of a projection in `layout`), weight and bias (fp32), and a whole upstream gradient with the
    same contiguous axis."""
    batch, dim, length, width = SHAPE
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda", dtype=dtype)

    inputs = {
        "x": in_layout(rand(batch, dim, length), layout),
        "weight": rand(dim, width, dtype=torch.float32) * 0.5,
        "bias": rand(dim, dtype=torch.float32),
    }
    return inputs, in_layout(rand(batch, dim, length), layout, half=False)


def implementations() -> dict[str, Callable | None]:
    """name -> fn(x, weight, bias) with silu; None where the package cannot be imported."""
    impls: dict[str, Callable | None] = {
        "triton": lambda x, weight, bias: causal_conv1d_triton(x, weight, bias, "silu"),
    }
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as error:  # an ABI mismatch raises more than ImportError; go on without it
        print(f"causal-conv1d unavailable: {type(error).__name__}: {error}", flush=True)
        impls["causal_conv1d"] = None
    else:
        impls["causal_conv1d"] = lambda x, weight, bias: causal_conv1d_fn(x, weight, bias, activation="silu")
    return impls


def with_grads(fn: Callable, inputs: dict[str, torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    """[out, dx, dweight, dbias] of fn on leaf copies of inputs (x's layout kept: detach() is a view)."""
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    return [out, *torch.autograd.grad(out, list(leaves.values()), grad.to(out.dtype))]


def errors(
    fn: Callable, inputs: dict[str, torch.Tensor], grad: torch.Tensor, reference: list[torch.Tensor]
) -> tuple[float, float]:
    """Relative errors of the output, and the largest over output and gradients, against `reference`."""
    results = with_grads(fn, inputs, grad)
    all_errors = [relative_error(value, ref) for value, ref in zip(results, reference, strict=True)]
    return all_errors[0], max(all_errors)


def time_ms(fn: Callable, inputs: dict[str, torch.Tensor], grad: torch.Tensor, backward: bool) -> float:
    """Median ms of the forward, or of forward+backward (gradients of x, weight and bias)."""
    if not backward:
        with torch.no_grad():
            return do_bench(lambda: fn(**inputs), warmup=25, rep=100, return_mode="median")
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    return do_bench(
        lambda: torch.autograd.grad(fn(**leaves), list(leaves.values()), grad), warmup=25, rep=100, return_mode="median"
    )


def bench_conv(impls: dict[str, Callable | None] | None = None, layouts: tuple[str, ...] = LAYOUTS) -> list[dict]:
    """One row per op (fwd, fwd+bwd), layout and implementation (default: mambakit's Triton kernels and the
    causal-conv1d package): op, layout, shape, backend, ms and rel_err (vs float64: the output's for fwd, the
    largest of output and gradients for fwd+bwd); ms and rel_err are None for an implementation that cannot be
    imported. Correctness is checked before any timing."""
    impls = impls if impls is not None else implementations()
    rows = []
    for layout in layouts:
        inputs, grad = conv_inputs(layout)
        exact = {k: v.double() for k, v in inputs.items()}
        reference = with_grads(lambda x, weight, bias: causal_conv1d_ref(x, weight, bias, "silu"), exact, grad)
        checked = {
            name: errors(fn, inputs, grad, reference) if fn is not None else (None, None) for name, fn in impls.items()
        }
        del exact, reference
        torch.cuda.empty_cache()
        for name, fn in impls.items():
            for op, backward in (("fwd", False), ("fwd+bwd", True)):
                rows.append(
                    {
                        "op": op,
                        "layout": layout,
                        "shape": shape_name(),
                        "backend": name,
                        "ms": time_ms(fn, inputs, grad, backward) if fn is not None else None,
                        "rel_err": checked[name][int(backward)],
                    }
                )
    return rows


def sweep_configs() -> list[dict]:
    """The Triton kernels with each tile shape of SWEEP, as rows like bench_conv's."""
    rows = []
    for layout, shapes in SWEEP.items():
        impls = {}
        for shape in shapes:
            config = ConvConfig(*shape)
            impls["triton {}x{}x{} w{} t{}".format(*shape)] = lambda x, weight, bias, config=config: (
                causal_conv1d_triton(x, weight, bias, "silu", config=config)
            )
        rows += bench_conv(impls, (layout,))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'op':8s} {'layout':13s} {'shape':22s} {'backend':28s} {'ms':>8s} {'rel_err':>9s}")
    for row in rows:
        ms = f"{row['ms']:8.4f}" if row["ms"] is not None else f"{'-':>8s}"
        err = f"{row['rel_err']:9.2e}" if row["rel_err"] is not None else f"{'-':>9s}"
        print(f"{row['op']:8s} {row['layout']:13s} {row['shape']:22s} {row['backend']:28s} {ms} {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernels' tile shapes")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}", flush=True)
    rows = bench_conv()
    if args.sweep:
        rows += sweep_configs()
    print_table(rows)


if __name__ == "__main__":
    sys.exit(main())
