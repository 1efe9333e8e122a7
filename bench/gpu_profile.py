"""The selective scan's kernels, once each, for Nsight Compute: mambakit's cuda forward and backward v2, the
Triton kernels and mamba-ssm's, at one benchmark shape (bf16 inputs, as bench/gpu.py times them).

Warm-up (compiling, autotuning, the first launches) runs before cudaProfilerStart, so that ncu, started with
`--profile-from-start off`, sees one forward and one backward of each implementation:

    ncu --clock-control none --profile-from-start off --set full -o $OUT/scan python3 bench/gpu_profile.py
    ncu --import $OUT/scan.ncu-rep --page details > $OUT/scan_details.txt

bench/results/gpu_notes.md says what the profile showed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import GRAD_NAMES, cuda_fns, mamba_fn, triton_fn  # the sibling script, importable once on the path

from mambakit.ops.timing import scan_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,1536,16,2048", help="batch,dim,states,length")
    parser.add_argument("--impls", default="cuda_v2,triton,mamba_ssm", help="comma-separated implementations")
    args = parser.parse_args()
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
