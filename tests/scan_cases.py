"""Shared by the scan tests of every backend: random inputs in mamba-ssm's shapes, the relative error, and the
shape cases every backend must pass."""

from __future__ import annotations

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
