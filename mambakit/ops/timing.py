"""Timing one selective-scan backend at one shape: device events on CUDA, a monotonic clock on CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from . import selective_scan


def scan_inputs(batch: int, dim: int, d_state: int, length: int, device: str | torch.device,
                dtype: torch.dtype = torch.float32, requires_grad: bool = False, seed: int = 0) -> dict:
    """Random inputs as a Mamba layer feeds the scan: (batch, N, L) B/C, z gate, D, delta bias, softplus."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0, tensor_dtype: torch.dtype = dtype) -> torch.Tensor:
        value = (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=tensor_dtype)
        return value.requires_grad_(requires_grad)

    A = -(torch.rand(dim, d_state, generator=generator) + 0.1).to(device)
    return {
        "u": rand(batch, dim, length), "delta": rand(batch, dim, length, scale=0.5),
        "A": A.requires_grad_(requires_grad), "B": rand(batch, d_state, length), "C": rand(batch, d_state, length),
        "D": rand(dim, tensor_dtype=torch.float32), "z": rand(batch, dim, length),
        "delta_bias": rand(dim, scale=0.3, tensor_dtype=torch.float32), "delta_softplus": True,
    }


def time_scan(backend: str, batch: int, dim: int, d_state: int, length: int, device: str | torch.device,
              backward: bool = True, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Median milliseconds of selective_scan (forward, or forward+backward) after one warm-up call."""
    inputs = scan_inputs(batch, dim, d_state, length, device, dtype, requires_grad=backward)

    def once() -> None:
        out = selective_scan(**inputs, backend=backend)
        if backward:
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
