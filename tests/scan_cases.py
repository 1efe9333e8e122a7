"""Shared by the scan tests of every backend: random inputs in mamba-ssm's shapes, the relative error, the
shape cases every backend must pass, and running kernels in Triton's CPU interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)).item()


def scan_inputs(batch, dim, d_state, length, layout, *, gated=True, skip=True, bias=True, initial=True,
                device="cpu", seed=0):
    """Fresh random float64 inputs in mamba-ssm's shapes; layout is 'shared', 'grouped:G' or 'time_invariant'."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    if layout == "time_invariant":
        bc_shape = (dim, d_state)
    elif layout.startswith("grouped"):
        bc_shape = (batch, int(layout.split(":")[1]), d_state, length)
    else:
        bc_shape = (batch, d_state, length)
    return {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length, scale=0.5),
        "A": -torch.rand(dim, d_state, generator=g, dtype=torch.float64).to(device) * 2 - 0.05,
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(dim) if skip else None,
        "z": rand(batch, dim, length) if gated else None,
        "delta_bias": rand(dim, scale=0.3) if bias else None,
        "initial_state": rand(batch, dim, d_state) if initial else None,
    }


CASES = [
    # batch, dim, N, L, layout, options
    (2, 8, 4, 37, "shared", {}),
    (1, 6, 3, 101, "grouped:3", {}),
    (2, 8, 5, 19, "grouped:2", {"gated": False, "bias": False}),
    (2, 4, 4, 33, "time_invariant", {}),
    (3, 5, 2, 1, "shared", {"skip": False, "initial": False}),
    (2, 7, 16, 64, "shared", {"initial": False}),
]


def run_in_triton_interpreter(module: str, function: str) -> None:
    """Run tests/<module>.<function>() in a subprocess with TRITON_INTERPRET=1 (Triton's CPU interpreter, which
    must be set before triton is imported), so the kernels are exercised without a GPU."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {module}; {module}.{function}()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if "only 0-dimensional arrays can be converted to Python scalars" in result.stderr:
        pytest.skip("this Triton's interpreter cannot run loops over kernel arguments with numpy >= 2.5 "
                    "(Triton 3.6 on the GPU image; 3.8 can)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
