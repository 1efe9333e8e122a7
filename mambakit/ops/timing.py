"""Measuring the selective scan: random inputs in mamba-ssm's shapes, relative errors, and timing one backend at
one shape (device events on CUDA, a monotonic clock on CPU). `mambakit bench`, the scripts in bench/ and the
tests share these."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from . import selective_scan


def scan_inputs(
    batch: int,
    dim: int,
    d_state: int,
    length: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    requires_grad: bool = False,
    layout: str = "shared",
    c_layout: str | None = None,
    gated: bool = True,
    skip: bool = True,
    bias: bool = True,
    initial: bool = False,
) -> dict[str, Tensor]:
    """Random inputs as a Mamba layer feeds the scan, the keyword arguments of `selective_scan` in its order:
    u, delta (scaled by 0.5), A in [-2.05, -0.05], B, C, and unless switched off D (`skip`), z (`gated`),
    delta_bias (scaled by 0.3, `bias`), and with `initial` an initial state. Inputs switched off are left out.

    B and C are (batch, N, L) for layout "shared", (batch, G, N, L) for "grouped:G", (dim, N) for
    "time_invariant"; `c_layout`, when given, is C's and `layout` B's alone. All are drawn in float64 from a
    generator on `device` seeded with `seed`, then u, delta, z and per-step B, C are rounded to `dtype`; A, D,
    delta_bias, the initial state and time-invariant B, C are fp32 (float64 when `dtype` is), as a layer's
    parameters and state. Each is a leaf with `requires_grad`.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def leaf(value: Tensor, kind: torch.dtype) -> Tensor:
        return value.to(kind).requires_grad_(requires_grad)

    def rand(*shape: int, scale: float = 1.0, kind: torch.dtype = dtype) -> Tensor:
        return leaf(torch.randn(*shape, generator=generator, device=device, dtype=torch.float64) * scale, kind)

    inputs = {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length, scale=0.5),
        "A": leaf(
            -torch.rand(dim, d_state, generator=generator, device=device, dtype=torch.float64) * 2 - 0.05, param_dtype
        ),
    }
    for name, its_layout in (("B", layout), ("C", layout if c_layout is None else c_layout)):
        shape = _bc_shape(its_layout, batch, dim, d_state, length)
        inputs[name] = rand(*shape, kind=param_dtype if its_layout == "time_invariant" else dtype)
    if skip:
        inputs["D"] = rand(dim, kind=param_dtype)
    if gated:
        inputs["z"] = rand(batch, dim, length)
    if bias:
        inputs["delta_bias"] = rand(dim, scale=0.3, kind=param_dtype)
    if initial:
        inputs["initial_state"] = rand(batch, dim, d_state, kind=param_dtype)
    return inputs


def _bc_shape(layout: str, batch: int, dim: int, d_state: int, length: int) -> tuple[int, ...]:
    if layout == "time_invariant":
        return (dim, d_state)
    if layout.startswith("grouped:"):
        return (batch, int(layout.split(":", 1)[1]), d_state, length)
    if layout == "shared":
        return (batch, d_state, length)
    raise UserError(f"layout must be 'shared', 'grouped:G' or 'time_invariant', got {layout!r}")


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (the denominator at least 1e-30)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)).item()


def time_scan(
    backend: str,
    batch: int,
    dim: int,
    d_state: int,
    length: int,
    device: str | torch.device,
    backward: bool = True,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Median milliseconds of selective_scan (forward, or forward+backward) after one warm-up call."""
    inputs = scan_inputs(batch, dim, d_state, length, device, dtype, requires_grad=backward)

    def once() -> None:
        out = selective_scan(**inputs, delta_softplus=True, return_last_state=False, backend=backend)
        if backward:
            assert isinstance(out, Tensor)  # no last state was asked for
            out.float().sum().backward()

    once()
    return median_ms(once, repeats, device)


def median_ms(run: Callable[[], object], repeats: int, device: str | torch.device) -> float:
    """Median milliseconds of `repeats` calls of `run`: device events on CUDA, a monotonic clock elsewhere."""
    cuda = torch.device(device).type == "cuda"
    times = []
    for _ in range(repeats):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)
