"""Check, then time, mambakit's GPU path side by side with mamba-ssm on one GPU: the selective scan, the causal
conv1d, one Mamba block, a 130M LM training step and generation.

Run on the GPU machine (see bench/results/gpu_notes.md for the exact command):

    python bench/gpu.py [--out DIR] [--sweep] [--forward-tiles] [--skip-models]

1. The copy rate of the card (the memory floor's rate).
2. Correctness, before any timing: relative errors against the float64 reference (mambakit's sequential
   `selective_scan_ref` on float64 copies of the same inputs) for the Triton scan, the CUDA scan with each of its
   backward kernels (`cuda_v1`, `cuda_v2`, `cuda_deterministic`) and mamba-ssm, forward and every gradient, fp32
   and bf16; the forward at L = 2^20 against the `torch` backend in float64.
3. Timing with triton.testing.do_bench medians: forward and forward+backward at the benchmark shapes, Triton, CUDA
   (each backward) and mamba-ssm in the same run; with --sweep, first the tile configurations of both Triton
   kernels; with --forward-tiles, first each tile of the CUDA forward (steps a lane, states at once), checked
   against float64, then timed.
4. The causal conv1d against the causal-conv1d package (bench/gpu_conv.py), then the Mamba block, the 130M LM
   training step and greedy generation against mamba-ssm with identical weights (bench/gpu_model.py); each
   checks its results against mamba-ssm before timing. --skip-models leaves these out.
Short tables are printed last; everything is written to DIR/gpu_results.json (DIR: $OUT, else bench/results).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from triton.testing import do_bench

from mambakit.ops.reference import selective_scan_ref
from mambakit.ops.timing import relative_error, scan_inputs
from mambakit.ops.torch_scan import selective_scan_torch
from mambakit.ops.triton_scan import ScanConfig, default_config, selective_scan_triton

sys.path.insert(0, str(Path(__file__).parent))
import gpu_conv  # the sibling scripts, importable once their folder is on the path
import gpu_model
import report
from report import log

SHAPES = [(8, 1536, 16, 2048), (8, 2048, 16, 4096), (1, 1536, 16, 65536)]
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# (block_d, block_l, warps, unroll) for each kernel; the backward's block_l is also the save interval.
FWD_SWEEP = [
    (1, 256, 1, 16),
    (8, 32, 1, 1),
    (8, 32, 1, 16),
    (16, 32, 2, 16),
    (4, 64, 1, 16),
    (2, 128, 1, 16),
    (1, 128, 1, 16),
    (8, 64, 2, 16),
]
BWD_SWEEP = [
    (2, 128, 1, 1),
    (8, 32, 1, 1),
    (1, 128, 1, 2),
    (2, 64, 1, 2),
    (4, 32, 1, 1),
    (1, 256, 1, 1),
    (2, 256, 1, 1),
    (4, 64, 1, 1),
]


def triton_fn(config: ScanConfig | None = None) -> Callable:
    return lambda **kw: selective_scan_triton(**kw, delta_softplus=True, config=config)


def cuda_fns() -> dict[str, Callable]:
    """The cuda backend with each backward kernel, and v2 deterministic, by result name (cuda_v1 was "cuda" in
    earlier runs); none where it is unavailable."""
    from mambakit.ops import nvrtc

    reason = nvrtc.unavailable_reason(torch.device("cuda"))
    if reason is not None:
        log(f"the cuda backend is unavailable: {reason}")
        return {}
    from mambakit.ops.cuda_scan import BACKWARDS, selective_scan_cuda

    fns = {
        f"cuda_{backward}": functools.partial(selective_scan_cuda, delta_softplus=True, backward=backward)
        for backward in BACKWARDS
    }
    # Backward v2 without atomics: what torch.use_deterministic_algorithms(True) costs.
    fns["cuda_deterministic"] = functools.partial(selective_scan_cuda, delta_softplus=True, deterministic=True)
    return fns


def mamba_fn() -> Callable | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # report any import failure and go on without it
        log(f"mamba-ssm unavailable: {type(error).__name__}: {error}")
        return None
    return lambda **kw: selective_scan_fn(**kw, delta_softplus=True)


def outputs_and_grads(fn: Callable, inputs: dict, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    grads = torch.autograd.grad(out, [leaves[k] for k in GRAD_NAMES], grad.to(out.dtype))
    return out, dict(zip(GRAD_NAMES, grads, strict=True))


def check_against_float64(fns: dict[str, Callable], shape: tuple, dtype: torch.dtype, layout: str = "shared") -> dict:
    """Max and per-output relative errors vs the float64 reference, for each implementation (B/C `layout` as in
    mambakit.ops.timing.scan_inputs)."""
    inputs = scan_inputs(*shape, "cuda", dtype, seed=sum(shape), layout=layout)
    grad = torch.randn(shape[0], shape[1], shape[3], device="cuda", dtype=torch.float64)
    exact = {k: v.double() for k, v in inputs.items()}
    ref_out, ref_grads = outputs_and_grads(lambda **kw: selective_scan_ref(**kw, delta_softplus=True), exact, grad)
    result = {}
    for name, fn in fns.items():
        out, grads = outputs_and_grads(fn, inputs, grad)
        errors = {
            "out": relative_error(out, ref_out),
            **{f"d{k}": relative_error(v, ref_grads[k]) for k, v in grads.items()},
        }
        finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads.values())
        result[name] = {"max": max(errors.values()) if finite else float("nan"), "errors": errors}
    return result


def check_long_forward(ours: dict[str, Callable], length: int = 1 << 20) -> dict:
    """Forward at L = 2^20, fp32, of each of our scans against the `torch` backend in float64 (and the last
    state)."""
    inputs = scan_inputs(1, 8, 16, length, "cuda", torch.float32, seed=7)
    exact = {k: v.double() for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_torch(**exact, delta_softplus=True, return_last_state=True, chunk_size=1 << 16)
    result = {}
    for name, fn in ours.items():
        out, last = fn(**inputs, return_last_state=True)
        result[name] = {
            "out": relative_error(out, ref_out),
            "last": relative_error(last, ref_last),
            "finite": bool(torch.isfinite(out).all()),
        }
    return result


def copy_rate() -> float:
    """TB/s of a 1 GiB device-to-device copy, bytes read plus written."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e12


def time_scan(fn: Callable, shape: tuple, backward: bool) -> float:
    """Median ms of fn's forward, or forward+backward (every input's gradient), on bf16 inputs."""
    inputs = scan_inputs(*shape, "cuda", torch.bfloat16, requires_grad=backward)
    if not backward:
        with torch.no_grad():
            return do_bench(lambda: fn(**inputs), warmup=25, rep=100, return_mode="median")
    grad = torch.randn(shape[0], shape[1], shape[3], device="cuda", dtype=torch.bfloat16)
    leaves = [inputs[k] for k in GRAD_NAMES]
    return do_bench(lambda: torch.autograd.grad(fn(**inputs), leaves, grad), warmup=25, rep=100, return_mode="median")


def check_segments(fn: Callable) -> dict:
    """The cuda backward in segments (one long sequence of few channels) against float64: every gradient at
    B1 D64 L16384 (4 segments of 4,096)."""
    with segmented_backward(True):
        return check_against_float64({"cuda_v2_segments": fn}, (1, 64, 16, 16384), torch.float32)


@contextlib.contextmanager
def segmented_backward(on: bool) -> Iterator[None]:
    """The cuda backward's segments for one long sequence (cuda_scan.SEGMENTED_BACKWARD) on or off meanwhile."""
    from mambakit.ops import cuda_scan

    saved, cuda_scan.SEGMENTED_BACKWARD = cuda_scan.SEGMENTED_BACKWARD, on
    try:
        yield
    finally:
        cuda_scan.SEGMENTED_BACKWARD = saved


def forward_tiles() -> list[dict]:
    """Each of the cuda forward's FORWARD_TILES (at every grid size): its max relative error against float64 (fp32,
    every gradient, with the default backward) and its forward ms at each benchmark shape."""
    from mambakit.ops import cuda_scan

    names = ("FORWARD_ITEMS", "SMALL_GRID_FORWARD_ITEMS", "FORWARD_IN_FLIGHT")
    defaults = [getattr(cuda_scan, name) for name in names]
    rows = []
    fn = functools.partial(cuda_scan.selective_scan_cuda, delta_softplus=True)
    try:
        for items, in_flight in cuda_scan.FORWARD_TILES:
            for name, value in zip(names, (items, items, in_flight), strict=True):  # the tile at every grid size
                setattr(cuda_scan, name, value)
            row: dict = {"items": items, "in_flight": in_flight}
            row["max_rel_err"] = check_against_float64({"cuda": fn}, (2, 96, 16, 1001), torch.float32)["cuda"]["max"]
            for shape in SHAPES:
                row["B{} D{} N{} L{}".format(*shape)] = time_scan(fn, shape, backward=False)
            log(row)
            rows.append(row)
    finally:
        for name, value in zip(names, defaults, strict=True):
            setattr(cuda_scan, name, value)
    return rows


def time_state_update(batch: int = 64, dim: int = 1536, d_state: int = 16) -> dict:
    """Median microseconds of one decode step (bf16 x/dt/z/B/C, fp32 state), Triton and mamba-ssm."""
    from mambakit.ops.triton_step import selective_state_update_triton

    inputs = scan_inputs(batch, dim, d_state, 1, "cuda", torch.bfloat16)
    state = torch.randn(batch, dim, d_state, device="cuda")
    args = (
        inputs["u"][..., 0],
        inputs["delta"][..., 0],
        inputs["A"],
        inputs["B"][..., 0],
        inputs["C"][..., 0],
        inputs["D"],
        inputs["z"][..., 0],
        inputs["delta_bias"],
    )
    fns = {"triton": selective_state_update_triton}
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        fns["mamba_ssm"] = selective_state_update
    except Exception as error:
        log(f"mamba-ssm's selective_state_update unavailable: {error}")
    result = {"shape": f"B{batch} D{dim} N{d_state}"}
    for name, fn in fns.items():
        result[f"{name}_us"] = 1e3 * do_bench(
            lambda fn=fn: fn(state, *args, dt_softplus=True), warmup=25, rep=100, return_mode="median"
        )
    return result


def sweep(shape: tuple) -> tuple[ScanConfig, list]:
    """Time every forward configuration (no gradients), then every backward one (forward+backward, with the
    best forward); return the best configuration and the table."""
    rows = []
    best_fwd, best_ms = None, float("inf")
    for bd, bl, warps, unroll in FWD_SWEEP:
        config = ScanConfig(fwd_block_d=bd, fwd_block_l=bl, fwd_warps=warps, fwd_unroll=unroll)
        try:
            ms = time_scan(triton_fn(config), shape, backward=False)
        except Exception as error:  # a configuration that fails to compile is reported, skipped
            ms, note = float("nan"), f"{type(error).__name__}: {error}"[:200]
        else:
            note = ""
        rows.append(
            {"kernel": "fwd", "block_d": bd, "block_l": bl, "warps": warps, "unroll": unroll, "ms": ms, "note": note}
        )
        log(f"  fwd bd={bd:3d} bl={bl:3d} w={warps} unroll={unroll:2d}: {ms:.4f} ms {note}")
        if ms < best_ms:
            best_fwd, best_ms = (bd, bl, warps, unroll), ms
    best, best_ms = None, float("inf")
    for bd, bl, warps, unroll in BWD_SWEEP:
        config = ScanConfig(*best_fwd, bwd_block_d=bd, bwd_block_l=bl, bwd_warps=warps, bwd_unroll=unroll)
        try:
            ms = time_scan(triton_fn(config), shape, backward=True)
        except Exception as error:
            ms, note = float("nan"), f"{type(error).__name__}: {error}"[:200]
        else:
            note = ""
        rows.append(
            {
                "kernel": "fwd+bwd",
                "block_d": bd,
                "block_l": bl,
                "warps": warps,
                "unroll": unroll,
                "ms": ms,
                "note": note,
            }
        )
        log(f"  fwd+bwd bd={bd:3d} bl={bl:3d} w={warps} unroll={unroll:2d}: {ms:.4f} ms {note}")
        if ms < best_ms:
            best, best_ms = config, ms
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(report.RESULTS))
    parser.add_argument("--sweep", action="store_true", help="time the tile configurations first")
    parser.add_argument("--skip-models", action="store_true", help="time the scan only")
    parser.add_argument(
        "--forward-tiles", action="store_true", help="check and time the cuda forward's tiles (FORWARD_TILES) first"
    )
    parser.add_argument("--commit", default="", help="commit the tree was checked out at (default: git HEAD)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    results: dict = {**report.gpu_machine(), "commit": report.git_commit(args.commit)}
    mamba, cudas = mamba_fn(), cuda_fns()
    if mamba is not None:
        results["mamba_ssm"] = report.version("mamba_ssm")
    log(json.dumps(results))

    def save() -> None:
        report.write(out_dir, "gpu_results", results, indent=1)

    def section(name: str, run: Callable[[], object]) -> None:
        began = time.time()
        try:
            results[name] = run()
        except Exception:  # keep what the other sections measure
            results[name] = {"error": traceback.format_exc()[-2000:]}
        log(f"[{name}] {time.time() - began:.1f}s: {json.dumps(results[name], default=str)[:3000]}")
        save()

    section("copy_TBps", copy_rate)
    ours = {"triton": triton_fn(), **cudas}
    impls = {**ours, **({"mamba_ssm": mamba} if mamba is not None else {})}
    section("correct_fp32", lambda: check_against_float64(impls, (2, 96, 16, 1001), torch.float32))
    section(
        "correct_fp32_groups",
        lambda: check_against_float64(ours, (2, 96, 16, 515), torch.float32, layout="grouped:4"),
    )
    check_shape = (2, *SHAPES[0][1:])  # the benchmark shape at batch 2: the float64 autograd graph stays small
    section("correct_bf16_bench_shape", lambda: check_against_float64(impls, check_shape, torch.bfloat16))
    section("correct_long_fp32", lambda: check_long_forward(ours))
    if cudas:
        section("correct_segments_fp32", lambda: check_segments(cudas["cuda_v2"]))

    if args.forward_tiles and cudas:
        section("forward_tiles", forward_tiles)
    configs = {shape: default_config(shape[0], shape[1]) for shape in SHAPES}
    if args.sweep:
        for shape in SHAPES:

            def run_sweep(shape: tuple = shape) -> dict:
                best, rows = sweep(shape)
                return {"best": asdict(best), "rows": rows}

            key = "sweep B{} D{} N{} L{}".format(*shape)
            section(key, run_sweep)
            if "best" in results[key]:
                configs[shape] = ScanConfig(**results[key]["best"])
        best_main = configs[SHAPES[0]]
        section(
            "correct_bf16_best_config",
            lambda: check_against_float64({"triton": triton_fn(best_main)}, check_shape, torch.bfloat16),
        )
    results["configs"] = {"B{} D{} N{} L{}".format(*shape): asdict(c) for shape, c in configs.items()}

    def run_timing() -> list:
        rows = []
        for shape in SHAPES:
            impls = [("triton", triton_fn(configs[shape])), *cudas.items(), ("mamba_ssm", mamba)]
            if shape[0] == 1 and cudas:  # one long sequence: the cuda backward in one pass too
                impls.insert(len(impls) - 1, ("cuda_v2_one_pass", cudas["cuda_v2"]))
            for name, fn in impls:
                if fn is None:
                    continue
                row = {"impl": name, "shape": "B{} D{} N{} L{}".format(*shape)}
                for key, backward in (("fwd_ms", False), ("fwd_bwd_ms", True)):
                    try:
                        with segmented_backward(not name.endswith("_one_pass")):
                            row[key] = time_scan(fn, shape, backward)
                    except Exception as error:
                        row[key] = float("nan")
                        row[key.replace("ms", "error")] = f"{type(error).__name__}: {error}"[:300]
                log(row)
                rows.append(row)
                torch.cuda.empty_cache()
        return rows

    section("timing", run_timing)
    section("state_update", time_state_update)
    if not args.skip_models:
        section("conv", gpu_conv.bench_conv)
        for name, bench in gpu_model.BENCHES.items():
            section(name, bench)

    log("\n=== " + results["device"] + f" | copy {results.get('copy_TBps', float('nan')):.2f} TB/s")
    for shape, config in results["configs"].items():
        log(f"triton tiles at {shape}: " + " ".join(f"{k}={v}" for k, v in config.items()))
    for key in ("correct_fp32", "correct_fp32_groups", "correct_bf16_bench_shape", "correct_bf16_best_config"):
        for impl, value in (results.get(key) or {}).items():
            if isinstance(value, dict) and "max" in value:
                worst = max(value["errors"], key=value["errors"].get)
                log(f"{key:26s} {impl:10s} max rel err {value['max']:.2e} ({worst})")
    if isinstance(results.get("correct_long_fp32"), dict):
        for impl, value in results["correct_long_fp32"].items():
            log(f"{'correct_long_fp32 (2^20)':26s} {impl:10s} {json.dumps(value)}")
    for row in results.get("forward_tiles") or []:
        if isinstance(row, dict) and "items" in row:
            log(f"cuda forward tile items={row['items']} in_flight={row['in_flight']}: " + json.dumps(row))
    log(f"{'shape':24s} {'impl':10s} {'fwd ms':>8s} {'fwd+bwd ms':>11s}")
    for row in results.get("timing") or []:
        if isinstance(row, dict) and "impl" in row:
            log(
                f"{row['shape']:24s} {row['impl']:10s} {row.get('fwd_ms', float('nan')):8.3f} "
                f"{row.get('fwd_bwd_ms', float('nan')):11.3f}"
            )
    update = results.get("state_update")
    if isinstance(update, dict) and "triton_us" in update:
        log(f"decode step {update['shape']}: " + ", ".join(f"{k} {v:.1f}" for k, v in update.items() if "_us" in k))
    if isinstance(results.get("conv"), list):
        gpu_conv.print_table(results["conv"])
    model_rows = [row for name in gpu_model.BENCHES if isinstance(results.get(name), list) for row in results[name]]
    if model_rows:
        gpu_model.print_table(model_rows)
    save()


if __name__ == "__main__":
    sys.exit(main())
