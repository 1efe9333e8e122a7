"""`auto`'s measured choice of the scan backend: where more than one GPU backend can run a scan, the first call at
a new shape times each of them on the device at hand and the fastest runs every later call of that shape.

The timing runs each candidate's forward (and backward, when the call needs gradients) on random inputs of the
call's shape, drawn from a generator of its own so that the caller's random streams do not move; lengths are
rounded up to a power of two (at most MAX_MEASURED_LENGTH steps are timed) so that one measurement serves nearby
lengths. Inside a CUDA-graph capture or a torch.compile trace nothing can be timed: a shape measured before keeps
its choice there, any other runs on the first candidate in registration order. A candidate that fails (a kernel
that does not compile for this GPU, say) is left out of that choice. Set MAMBAKIT_SCAN_BACKEND to pin one backend
instead, e.g. so that every process of a multi-GPU run takes the same one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .backends import Backend

#: Steps timed at most: longer scans are timed at this length (the backends' ranking no longer changes with L there,
#: and the inputs of a 2^20-step shape would take gigabytes).
MAX_MEASURED_LENGTH = 1 << 16
_REPEATS = 3


@dataclass(frozen=True)
class ScanShape:
    """What a scan call's speed depends on: its sizes (length rounded up to a power of two), input dtype and
    features, and whether it needs gradients."""

    batch: int
    dim: int
    length: int
    states: int
    groups: int
    """B/C groups; 0 when B or C is time-invariant (dim, N)."""
    dtype: torch.dtype
    has_z: bool
    has_D: bool
    has_delta_bias: bool
    softplus: bool
    initial_state: bool
    grad: bool


def scan_shape(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    softplus: bool,
    initial_state: Tensor | None,
) -> ScanShape:
    """The ScanShape of a `selective_scan` call with these arguments (it needs gradients when grad mode is on and
    any of them requires one)."""
    batch, dim, length = u.shape
    groups = 0 if B.dim() == 2 or C.dim() == 2 else (B.shape[1] if B.dim() == 4 else 1)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return ScanShape(
        batch,
        dim,
        _bucket(length),
        A.shape[1],
        groups,
        u.dtype,
        z is not None,
        D is not None,
        delta_bias is not None,
        softplus,
        initial_state is not None,
        grad,
    )


def layer_scan_shape(batch: int, dim: int, length: int, states: int, dtype: torch.dtype) -> ScanShape:
    """The ScanShape of a Mamba layer's scan in training: z, D, a delta bias and softplus, one B/C group, no
    initial state, gradients."""
    return ScanShape(batch, dim, _bucket(length), states, 1, dtype, True, True, True, True, False, True)


def _bucket(length: int) -> int:
    return 1 << max(length - 1, 0).bit_length()


@dataclass(frozen=True)
class Measurement:
    """One measured choice: the winner and each candidate's median milliseconds (None: it failed, see errors)."""

    chosen: str
    milliseconds: dict[str, float | None]
    errors: dict[str, str]


_CHOICES: dict[tuple[int, str, ScanShape], Measurement] = {}


def measurements() -> dict[tuple[int, str, ScanShape], Measurement]:
    """The choices this process has measured so far, by (device index, op, shape)."""
    return dict(_CHOICES)


def forget_measurements() -> None:
    """Drop every measured choice: the next call at each shape measures again."""
    _CHOICES.clear()


def fastest(op: str, candidates: list[Backend], device: torch.device, shape: ScanShape) -> Backend:
    """The candidate that runs `op` at `shape` fastest on `device`, measured on first use of the shape (see the
    module's docstring for when it cannot be)."""
    device = torch.device(device)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    key = (index, op, shape)
    known = _CHOICES.get(key)
    if known is not None:
        return next((b for b in candidates if b.name == known.chosen), candidates[0])
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if capturing or torch.compiler.is_compiling():
        return candidates[0]
    milliseconds: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for backend in candidates:
        try:
            milliseconds[backend.name] = _time_scan(backend, device, shape)
        except Exception as error:  # a candidate that cannot run this shape here is no candidate
            milliseconds[backend.name] = None
            errors[backend.name] = f"{type(error).__name__}: {error}"
    timed = {name: ms for name, ms in milliseconds.items() if ms is not None}
    chosen = min(timed, key=timed.__getitem__) if timed else candidates[0].name
    _CHOICES[key] = Measurement(chosen, milliseconds, errors)
    return next(b for b in candidates if b.name == chosen)


def _time_scan(backend: Backend, device: torch.device, shape: ScanShape) -> float:
    """Median milliseconds of `backend`'s selective_scan (forward, and backward when shape.grad) at `shape`."""
    scan = backend.load("selective_scan")
    inputs = _random_inputs(device, shape)
    initial_state = inputs.pop("initial_state")
    leaves = [t for t in (*inputs.values(), initial_state) if t is not None]

    def run() -> None:
        out = scan(*inputs.values(), shape.softplus, initial_state, False)
        if shape.grad:
            torch.autograd.backward(out, torch.ones_like(out), inputs=leaves)

    with torch.autocast(device.type, enabled=False), torch.set_grad_enabled(shape.grad):
        run()  # first use: kernels compile and load
        times = []
        for _ in range(_REPEATS):
            _synchronize(device)
            started = time.perf_counter()
            run()
            _synchronize(device)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_inputs(device: torch.device, shape: ScanShape) -> dict[str, Tensor | None]:
    """Scan inputs of `shape` in the ranges a Mamba layer gives them, from a generator of their own."""
    generator = torch.Generator(device).manual_seed(0)
    batch, dim, states = shape.batch, shape.dim, shape.states
    length = min(shape.length, MAX_MEASURED_LENGTH)

    def normal(*size: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> Tensor:
        values = torch.randn(*size, generator=generator, device=device) * scale
        return values.to(dtype).requires_grad_(shape.grad)

    if shape.groups == 0:
        B, C = normal(dim, states), normal(dim, states)
    else:
        B, C = normal(batch, shape.groups, states, length), normal(batch, shape.groups, states, length)
    A = -torch.exp(torch.randn(dim, states, generator=generator, device=device)).requires_grad_(shape.grad)
    return {
        "u": normal(batch, dim, length, dtype=shape.dtype),
        "delta": normal(batch, dim, length, dtype=shape.dtype, scale=0.5),
        "A": A,
        "B": B,
        "C": C,
        "D": normal(dim) if shape.has_D else None,
        "z": normal(batch, dim, length, dtype=shape.dtype) if shape.has_z else None,
        "delta_bias": normal(dim, scale=0.5) if shape.has_delta_bias else None,
        "initial_state": normal(batch, dim, states) if shape.initial_state else None,
    }
