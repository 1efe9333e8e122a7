"""Shared by the scan tests of every backend: their random inputs (`mambakit.ops.timing.scan_inputs` in float64),
the shape cases every backend must pass, and running kernels in Triton's CPU interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambakit.ops import timing


def scan_inputs(
    batch: int,
    dim: int,
    d_state: int,
    length: int,
    layout: str,
    *,
    initial: bool = True,
    device: str = "cpu",
    seed: int = 0,
    **options: bool,
) -> dict[str, torch.Tensor]:
    """Fresh random float64 inputs in mamba-ssm's shapes, with an initial state unless `initial` is False; layout
    is 'shared', 'grouped:G' or 'time_invariant'; options gated, skip and bias False leave z, D, delta_bias out."""
    return timing.scan_inputs(
        batch, dim, d_state, length, device, torch.float64, seed=seed, layout=layout, initial=initial, **options
    )


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
        pytest.skip(
            "this Triton's interpreter cannot run loops over kernel arguments with numpy >= 2.5 "
            "(Triton 3.6 on the GPU image; 3.8 can)"
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
