"""The selective scan's kernels, once each, for Nsight Compute: mambakit's cuda forward and backward v2, the
Triton kernels and mamba-ssm's, at one benchmark shape (bf16 inputs, as bench/gpu.py times them).

Warm-up (compiling, autotuning, the first launches) runs before cudaProfilerStart, so that ncu, started with
`--profile-from-start off`, sees one forward and one backward of each implementation:

    ncu --clock-control none --profile-from-start off --set full -o $OUT/scan python3 bench/gpu_profile.py
    ncu --import $OUT/scan.ncu-rep --page details > $OUT/scan_details.txt

With --block, instead: where one Mamba mixer's time goes (d_model 768, B8 L2048, fp32 parameters under bf16
autocast, as bench/gpu_model.py times it), forward without autograd and forward+backward, by kernel, from
torch.profiler, for the scan backend --backend.

With --host-costs: the host's time to issue each layer of the cuda scan's forward (the bare kernel launch, the
custom op around it, the forward that prepares its inputs) and the other backends' forwards, at a shape small
enough that the GPU never holds the host back: where the mixer's host time goes, one layer at a time.

bench/results/gpu_notes.md says what the profiles showed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import GRAD_NAMES, cuda_fns, mamba_fn, triton_fn  # the sibling script, importable once on the path
from host_waits import recorded_host_waits, waits_lines

from mambakit.nn import Mamba
from mambakit.ops.timing import scan_inputs


def profile_block(backend: str, batch: int = 8, length: int = 2048, d_model: int = 768) -> None:
    """Print the kernels of the mixer's forward (no autograd) and forward+backward, most GPU time first."""
    torch.manual_seed(0)
    block = Mamba(d_model, scan_backend=backend, device="cuda")
    x = torch.randn(batch, length, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    params = list(block.parameters())

    def forward() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return block(x)

    def forward_backward() -> None:
        torch.autograd.grad(forward(), [x, *params], grad)

    def forward_only() -> None:
        with torch.no_grad():
            forward()

    for name, step in (("forward", forward_only), ("forward+backward", forward_backward)):
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        # Host time to issue a step against the GPU's time to run it: where the first is the larger, the block's
        # timings measure Python and launch overhead, not kernels.
        started = time.perf_counter()
        for _ in range(20):
            step()
        issued = time.perf_counter()
        torch.cuda.synchronize()
        finished = time.perf_counter()
        host_ms, wall_ms = (issued - started) * 50, (finished - started) * 50
        print(f"== mixer {name}: host {host_ms:.3f} ms to issue a step, {wall_ms:.3f} ms a step until the GPU is done")
        print_host_time(name, step)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        table = profiler.key_averages().table(sort_by="self_device_time_total", row_limit=22, max_name_column_width=70)
        print(f"== mixer {name}, scan backend {backend}, 10 steps\n{table}")


def print_host_time(name: str, step: Callable[[], object]) -> None:
    """Where the host's time to issue `step` goes (cProfile over 20 steps, functions by own time), and every
    operation in one step that makes the host wait for the GPU (torch's sync debug mode)."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        step()
    profile.disable()
    torch.cuda.synchronize()
    listing = io.StringIO()
    pstats.Stats(profile, stream=listing).sort_stats("tottime").print_stats(18)
    rows = [line for line in listing.getvalue().splitlines() if line.strip()][-19:]
    title = f"== mixer {name}: host time by function over 20 steps, in seconds (a backward runs on its own thread)"
    print(title, *rows, sep="\n")
    with recorded_host_waits() as waits:
        step()
    print(f"== mixer {name}: {sum(waits.values())} host waits in one step", *waits_lines(waits), sep="\n")


def host_costs(calls: int = 300) -> None:
    """Print microseconds of host time per call for each layer of a scan forward (B1 D64 N16 L256, bf16)."""
    from mambakit.ops import cuda_scan, triton_scan

    inputs = scan_inputs(1, 64, 16, 256, "cuda", torch.bfloat16)
    args = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    prepared = cuda_scan._prepare(*args, None)
    layers: dict[str, Callable[[], object]] = {
        "torch.empty (a baseline)": lambda: torch.empty(16, device="cuda"),
        "torch.add (a baseline)": lambda: torch.add(prepared.u, prepared.u),
        "cuda: _forward_outputs": lambda: cuda_scan._forward_outputs(prepared.u, prepared.A, prepared.B, "v2"),
        "cuda: _prepare": lambda: cuda_scan._prepare(*args, None),
        "cuda: _launch_forward": lambda: cuda_scan._launch_forward(prepared, True, "v2"),
        "cuda: custom op _forward_op": lambda: cuda_scan._forward_op(*prepared, True, "v2"),
        "cuda: selective_scan_fwd_cuda": lambda: cuda_scan.selective_scan_fwd_cuda(*args, True),
        "triton: selective_scan_fwd_triton": lambda: triton_scan.selective_scan_fwd_triton(*args, True),
    }
    mamba = mamba_fn()
    if mamba is not None:
        layers["mamba_ssm: selective_scan_fn"] = lambda: mamba(**inputs)
    for name, layer in layers.items():
        for _ in range(10):
            layer()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(calls):
            layer()
        host_us = (time.perf_counter() - started) / calls * 1e6
        torch.cuda.synchronize()
        print(f"== host {host_us:8.1f} us a call  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,1536,16,2048", help="batch,dim,states,length")
    parser.add_argument("--impls", default="cuda_v2,triton,mamba_ssm", help="comma-separated implementations")
    parser.add_argument("--block", action="store_true", help="profile one Mamba mixer with torch.profiler instead")
    parser.add_argument("--backend", default="cuda", help="the mixer's scan backend (with --block)")
    parser.add_argument("--host-costs", action="store_true", help="host time per call of each layer of a forward")
    args = parser.parse_args()
    if args.host_costs:
        host_costs()
        return
    if args.block:
        profile_block(args.backend)
        return
    shape = tuple(int(s) for s in args.shape.split(","))
    available = {**cuda_fns(), "triton": triton_fn()}
    mamba = mamba_fn()
    if mamba is not None:
        available["mamba_ssm"] = mamba
    fns = {name: available[name] for name in args.impls.split(",") if name in available}
    inputs = scan_inputs(*shape, "cuda", torch.bfloat16, requires_grad=True)
    leaves = [inputs[k] for k in GRAD_NAMES]
    grad = torch.randn(shape[0], shape[1], shape[3], device="cuda", dtype=torch.bfloat16)

    def once(fn: Callable) -> None:
        torch.autograd.grad(fn(**inputs), leaves, grad)

    for fn in fns.values():
        for _ in range(3):
            once(fn)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, fn in fns.items():
        torch.cuda.nvtx.range_push(name)
        once(fn)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled {', '.join(fns)} at {shape}")


if __name__ == "__main__":
    main()
