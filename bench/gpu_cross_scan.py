"""Check, then time, mambakit's Triton cross-scan and cross-merge (VMamba's SS2D) beside the torch backend on one GPU.

    python bench/gpu_cross_scan.py [--out DIR] [--commit SHA] [--layouts contiguous,channels_last] [--sweep]

At B128 D192 56x56 (VMamba-T's first stage at batch 128) and B128 D768 7x7 (its last), bf16; x (batch, dim, H, W)
contiguous or channels-last (as a conv2d or a layer norm over channels leaves it), y (batch, 4, dim, H*W)
contiguous. First each backend's outputs and gradients against the float64 reference on the same inputs (the
scan, a copy, must be bit-equal), then triton.testing.do_bench medians of the forward (no autograd) and of
forward+backward, with the bandwidth they reach counting the fewest bytes each must move (the (batch, dim, H, W)
side once and the (batch, 4, dim, H*W) side once, per pass). With --sweep, the Triton kernels' tile shapes are
timed too. Results: <out>/gpu_cross_scan.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from triton.testing import do_bench

from mambakit.ops.reference import cross_merge_ref, cross_scan_ref
from mambakit.ops.timing import relative_error
from mambakit.ops.triton_cross_scan import CrossScanConfig, cross_merge_triton, cross_scan_triton

sys.path.insert(0, str(Path(__file__).parent))
import report  # beside this script, importable once its folder is on the path
from report import log

SHAPES = [(128, 192, 56, 56), (128, 768, 7, 7)]  # batch, dim, H, W
DTYPE = torch.bfloat16
LAYOUTS = ("contiguous", "channels_last")
# Tile shapes (block_d, block_h, block_w, warps) for --sweep, per layout of the (batch, dim, H, W) side.
SWEEP = {
    "contiguous": [
        (1, 8, 64, 4),
        (1, 4, 64, 4),
        (1, 8, 64, 2),
        (1, 4, 64, 2),
        (1, 2, 64, 2),
        (8, 8, 8, 4),
        (8, 8, 8, 2),
        (4, 8, 8, 2),
        (8, 8, 8, 1),
        (2, 8, 8, 1),
    ],
    "channels_last": [
        (16, 8, 8, 4),
        (8, 8, 8, 4),
        (16, 8, 8, 8),
        (8, 8, 8, 2),
        (16, 4, 8, 4),
        (16, 4, 4, 2),
        (32, 4, 4, 4),
        (8, 4, 8, 2),
    ],
}

Scan = Callable[[torch.Tensor], torch.Tensor]
Merge = Callable[[torch.Tensor, int, int], torch.Tensor]


def implementations() -> dict[str, tuple[Scan, Merge]]:
    """backend name -> (cross_scan, cross_merge)."""
    return {
        "triton": (cross_scan_triton, cross_merge_triton),
        "torch": (cross_scan_ref, cross_merge_ref),  # the torch backend's functions
    }


def shape_name(shape: tuple[int, int, int, int]) -> str:
    return "B{} D{} {}x{}".format(*shape)


def inputs(shape: tuple[int, int, int, int], layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """x (batch, dim, H, W) in `layout`, y (batch, 4, dim, H*W) and the upstream gradients of both ops' outputs."""
    batch, dim, height, width = shape
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, device="cuda", dtype=DTYPE)

    x = rand(*shape)
    return {
        "x": x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x,
        "grad_scan": rand(batch, 4, dim, height * width),
        "y": rand(batch, 4, dim, height * width),
        "grad_merge": rand(*shape),
    }


def run_op(op: str, fn: Callable, data: dict[str, torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    """[output, gradient of the input] of one op on a leaf copy of its input."""
    height, width = shape[2], shape[3]
    source, grad = ("x", "grad_scan") if op == "cross_scan" else ("y", "grad_merge")
    leaf = data[source].detach().requires_grad_()
    out = fn(leaf) if op == "cross_scan" else fn(leaf, height, width)
    (grad_in,) = torch.autograd.grad(out, leaf, data[grad])
    return [out.detach(), grad_in]


def check(op: str, fn: Callable, data: dict[str, torch.Tensor], shape: tuple[int, ...]) -> dict[str, Any]:
    """Relative errors of the output and the input's gradient against float64; whether the copies (the scan's
    forward, the merge's backward) are bit-equal to the reference."""
    exact = {k: v.double() for k, v in data.items()}
    reference = run_op(op, cross_scan_ref if op == "cross_scan" else cross_merge_ref, exact, shape)
    results = run_op(op, fn, data, shape)
    copy = results[0] if op == "cross_scan" else results[1]
    copy_ref = reference[0] if op == "cross_scan" else reference[1]
    return {
        "rel_err_out": relative_error(results[0], reference[0]),
        "rel_err_grad": relative_error(results[1], reference[1]),
        "copy_exact": bool(torch.equal(copy, copy_ref.to(copy.dtype))),
    }


def time_ms(op: str, fn: Callable, data: dict[str, torch.Tensor], shape: tuple[int, ...], backward: bool) -> float:
    """Median ms of the forward (no autograd), or of forward+backward."""
    height, width = shape[2], shape[3]
    source, grad = ("x", "grad_scan") if op == "cross_scan" else ("y", "grad_merge")
    if not backward:
        value = data[source]
        with torch.no_grad():
            if op == "cross_scan":
                return do_bench(lambda: fn(value), warmup=25, rep=200, return_mode="median")
            return do_bench(lambda: fn(value, height, width), warmup=25, rep=200, return_mode="median")
    leaf = data[source].detach().requires_grad_()
    upstream = data[grad]

    def step() -> None:
        out = fn(leaf) if op == "cross_scan" else fn(leaf, height, width)
        torch.autograd.grad(out, leaf, upstream)

    return do_bench(step, warmup=25, rep=200, return_mode="median")


def min_bytes(shape: tuple[int, int, int, int], backward: bool) -> int:
    """The fewest bytes a pass moves: the (batch, dim, H, W) side once and the 4x larger side once; twice that
    with the backward."""
    batch, dim, height, width = shape
    return (1 + 4) * batch * dim * height * width * DTYPE.itemsize * (2 if backward else 1)


def bench(
    impls: dict[str, tuple[Scan, Merge]], shapes: list[tuple[int, int, int, int]], layouts: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per shape, layout, op (cross_scan, cross_merge), pass (fwd, fwd+bwd) and backend: ms, GB/s over
    `min_bytes` and the correctness checks (done before any timing of that shape and layout)."""
    rows = []
    for shape in shapes:
        for layout in layouts:
            data = inputs(shape, layout)
            checks = {
                (op, name): check(op, fns[i], data, shape)
                for name, fns in impls.items()
                for i, op in enumerate(("cross_scan", "cross_merge"))
            }
            torch.cuda.empty_cache()
            for (op, name), checked in checks.items():
                fn = impls[name][0 if op == "cross_scan" else 1]
                for mode, backward in (("fwd", False), ("fwd+bwd", True)):
                    ms = time_ms(op, fn, data, shape, backward)
                    rows.append(
                        {
                            "shape": shape_name(shape),
                            "layout": layout,
                            "op": op,
                            "pass": mode,
                            "backend": name,
                            "ms": ms,
                            "GB/s": min_bytes(shape, backward) / ms / 1e6,
                            **checked,
                        }
                    )
                    log(format_row(rows[-1]))
            del data
            torch.cuda.empty_cache()
    return rows


def sweep(shapes: list[tuple[int, int, int, int]], layouts: tuple[str, ...]) -> list[dict[str, Any]]:
    """The Triton kernels with each tile shape of SWEEP (the merge's tile follows its output, always contiguous)."""
    rows = []
    for layout in layouts:
        impls: dict[str, tuple[Scan, Merge]] = {}
        for tile in SWEEP[layout]:
            config = CrossScanConfig(*tile)
            impls["triton {}x{}x{} w{}".format(*tile)] = (
                lambda x, config=config: cross_scan_triton(x, config=config),
                lambda y, h, w, config=config: cross_merge_triton(y, h, w, config=config),
            )
        rows += bench(impls, shapes, (layout,))
    return rows


HEADER = ("shape", "layout", "op", "pass", "backend", "ms", "GB/s", "rel_err_out", "rel_err_grad", "copy_exact")


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['shape']:16s} {row['layout']:13s} {row['op']:11s} {row['pass']:7s} {row['backend']:24s} "
        f"{row['ms']:8.4f} {row['GB/s']:7.0f} {row['rel_err_out']:9.2e} {row['rel_err_grad']:9.2e} "
        f"{row['copy_exact']!s:5s}"
    )


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Cross-scan / cross-merge ({results['device']}, torch {results['torch']}, triton {results['triton']}, "
        f"commit {results['commit']})",
        "",
        "bf16; triton.testing.do_bench medians; GB/s over the fewest bytes a pass moves (the (B, D, H, W) side "
        "once, the (B, 4, D, H*W) side once; twice for fwd+bwd); rel_err against float64; copy_exact: the scan "
        "forward (cross_scan) or the merge's backward (cross_merge) bit-equal to the reference.",
        "",
        "| " + " | ".join(HEADER) + " | speed-up vs torch |",
        "|" + "---|" * (len(HEADER) + 1),
    ]
    torch_ms = {
        (r["shape"], r["layout"], r["op"], r["pass"]): r["ms"] for r in results["rows"] if r["backend"] == "torch"
    }
    for row in results["rows"]:
        base = torch_ms.get((row["shape"], row["layout"], row["op"], row["pass"]))
        cells = [
            row["shape"],
            row["layout"],
            row["op"],
            row["pass"],
            row["backend"],
            f"{row['ms']:.4f}",
            f"{row['GB/s']:.0f}",
            f"{row['rel_err_out']:.1e}",
            f"{row['rel_err_grad']:.1e}",
            str(row["copy_exact"]),
            f"{base / row['ms']:.2f}x" if base else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or report.RESULTS))
    parser.add_argument("--commit", default="", help="commit the tree was checked out at (default: git HEAD)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {LAYOUTS}")
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernels' tile shapes")
    args = parser.parse_args()
    layouts = tuple(name.strip() for name in args.layouts.split(",") if name.strip())
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        parser.error(f"unknown layout {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    if not torch.cuda.is_available():
        print("bench/gpu_cross_scan.py needs a CUDA GPU and none is visible", file=sys.stderr)
        return 2
    log(" ".join(HEADER))
    rows = bench(implementations(), SHAPES, layouts)
    results: dict[str, Any] = {**report.gpu_machine(), "commit": report.git_commit(args.commit), "rows": rows}
    if args.sweep:
        results["sweep"] = sweep(SHAPES, layouts)
    report.write(args.out, "gpu_cross_scan", results, markdown(results))
    log(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
