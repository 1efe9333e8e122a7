"""The backend registry: which implementation runs an op, chosen at call time.

A backend is registered with a probe that says, for a device, whether it can run there and if not why.
`backend="auto"` (or the MAMBAKIT_SCAN_BACKEND environment variable) picks the first usable backend in
registration order that `auto` may choose for the op: mamba_ssm (the scan only), triton, cuda (the scan only),
torch, reference. For the scan, where several GPU backends are usable, `auto` instead takes the one measured fastest
at the call's shape on the device at hand (mambakit.ops.measured).
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import MambakitError, UserError
from .measured import ScanShape, fastest

ENV_VAR = "MAMBAKIT_SCAN_BACKEND"


class BackendUnavailableError(MambakitError, RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why and what to use."""


class NondeterministicError(MambakitError, RuntimeError):
    """An op whose result varies from run to run (it adds with atomics) ran under
    `torch.use_deterministic_algorithms(True)`; the message says which backends are deterministic."""


def alert_not_deterministic(what: str, use_instead: str) -> None:
    """As torch's own ops do: under `torch.use_deterministic_algorithms(True)`, raise NondeterministicError for
    `what` (with warn_only=True, warn instead); else nothing."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = f"{what} adds with atomics, so its result varies from run to run, and torch's deterministic algorithms "
    message += f"are on; {use_instead}"
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise NondeterministicError(message)


@dataclass(frozen=True)
class Backend:
    """One implementation of the ops. `probe(device)` returns None when usable there, else the reason."""

    name: str
    description: str
    probe: Callable[[torch.device], str | None]
    ops: dict[str, str] = field(default_factory=dict)
    """op name -> "module:function" (module relative to mambakit.ops), imported only when used;
    an op a backend lacks runs where `auto` would run it (the first usable backend that has it), else on `torch`."""
    lacks: frozenset[str] = frozenset()
    """Call features it cannot serve (e.g. "initial_state"): `auto` passes over it for such calls."""
    auto_ops: frozenset[str] | None = None
    """The ops `auto` picks it for (None: all of its ops); the others run on it only when asked for by name."""
    nondeterministic: frozenset[str] = frozenset()
    """Ops whose backward adds with atomics: under torch's deterministic algorithms, `auto` passes over it for them
    while gradients are on (asked for by name, their backward raises NondeterministicError)."""
    measured: bool = False
    """Where this and another measured backend can both run a scan, `auto` times them at each new shape and takes
    the faster (mambakit.ops.measured)."""

    def load(self, op: str) -> Callable:
        """Import and return this backend's function for `op`."""
        module, function = self.ops[op].split(":")
        return getattr(importlib.import_module(module, __package__), function)


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add a backend; later registrations come later in the `auto` order. Names must be unique."""
    if backend.name in _REGISTRY or backend.name == "auto":
        raise UserError(f"a scan backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend


def list_backends() -> list[str]:
    """Names of all registered backends, in `auto` order."""
    return list(_REGISTRY)


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def available_backends(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Each backend's name -> None when usable on `device` (default: CUDA if present, else CPU),
    else the reason it is not."""
    device = torch.device(device) if device is not None else _default_device()
    return {name: backend.probe(device) for name, backend in _REGISTRY.items()}


def resolve_backend(
    name: str,
    device: torch.device,
    op: str = "selective_scan",
    needs: frozenset[str] = frozenset(),
    shape: ScanShape | None = None,
) -> Backend:
    """The backend that runs `op` for tensors on `device`: `name`, or for "auto" the first usable one that has
    every feature in `needs`; given the call's `shape`, the fastest of the usable measured backends, timed on first
    use of the shape (mambakit.ops.measured)."""
    source = ""
    if name == "auto":
        name = os.environ.get(ENV_VAR, "auto") or "auto"
        source = f" (from {ENV_VAR})" if name != "auto" else ""
    if name == "auto":
        eligible = _auto_candidates(device, op, needs, every=shape is not None)
        if not eligible:
            raise BackendUnavailableError(f"no scan backend can run {op} on {device}")
        measured = [backend for backend in eligible if backend.measured]
        if shape is not None and len(measured) > 1:
            return fastest(op, measured, device, shape)
        return eligible[0]
    if name not in _REGISTRY:
        raise UserError(f"unknown scan backend {name!r}{source}; choose one of: auto, {', '.join(_REGISTRY)}")
    backend = _REGISTRY[name]
    reason = backend.probe(device)
    if reason is not None:
        raise BackendUnavailableError(f"scan backend {name!r} cannot run on {device}: {reason}")
    if needs & backend.lacks:
        raise BackendUnavailableError(
            f"scan backend {name!r} has no {', '.join(sorted(needs & backend.lacks))}; "
            "use backend='triton' or backend='torch'"
        )
    if op not in backend.ops:  # e.g. `cuda` (the scan only) for the conv: what `auto` takes for that op
        return next(iter(_auto_candidates(device, op, needs, every=False)), _REGISTRY["torch"])
    return backend


def _auto_candidates(device: torch.device, op: str, needs: frozenset[str], every: bool) -> list[Backend]:
    """The backends `auto` may take for `op` on `device`, in registration order: all of them, or (`every` False)
    only the first."""
    deterministic = torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled()
    found = []
    for backend in _REGISTRY.values():
        chosen_for = backend.ops if backend.auto_ops is None else backend.auto_ops
        if deterministic and op in backend.nondeterministic:
            continue
        if op in backend.ops and op in chosen_for and not needs & backend.lacks and backend.probe(device) is None:
            found.append(backend)
            if not every:
                break
    return found


def _needs_cuda(device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU and none is visible; use backend='torch' (fast, pure PyTorch) on CPU"
    if device.type != "cuda":
        return f"it needs CUDA tensors and these are on {device.type}; use backend='torch' (fast, pure PyTorch)"
    return None


@functools.cache
def _probe_import(module: str, extra_hint: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as error:  # an ABI mismatch raises more than ImportError
        return f"cannot import {module} ({type(error).__name__}: {error}); {extra_hint}"
    return None


def _probe_triton(device: torch.device) -> str | None:
    return (
        _needs_cuda(device)
        or _probe_import("triton", "install triton (it ships with CUDA builds of torch)")
        or (_probe_import(f"{__package__}.triton_scan", "this mambakit version has no Triton kernels"))
    )


def _probe_mamba_ssm(device: torch.device) -> str | None:
    return _needs_cuda(device) or _probe_import(
        "mamba_ssm.ops.selective_scan_interface",
        "install the official kernels with: pip install 'mambakit[cuda]' --no-build-isolation",
    )


def _always(device: torch.device) -> str | None:
    return None


def _probe_cuda(device: torch.device) -> str | None:
    from .nvrtc import unavailable_reason

    return unavailable_reason(device)


# Where nothing is measured, fastest first. mamba-ssm's CUDA scan beats mambakit's Triton scan on the H100
# (bench/results/gpu_notes.md), so where it is installed `auto` takes it for an unmeasured scan; for everything else
# (decode step, conv, norm, scans from an initial state) the Triton kernels run, which need no build. Its decode step
# stays selectable by name.
register_backend(
    Backend(
        "mamba_ssm",
        "the official mamba-ssm CUDA kernels",
        _probe_mamba_ssm,
        {
            "selective_scan": ".mamba_ssm_adapter:selective_scan_mamba_ssm",
            "selective_scan_fwd": ".mamba_ssm_adapter:selective_scan_fwd_mamba_ssm",
            "selective_scan_bwd": ".mamba_ssm_adapter:selective_scan_bwd_mamba_ssm",
            "selective_state_update": ".mamba_ssm_adapter:selective_state_update_mamba_ssm",
        },
        lacks=frozenset({"initial_state"}),
        auto_ops=frozenset({"selective_scan"}),
        nondeterministic=frozenset({"selective_scan"}),
        measured=True,
    )
)
register_backend(
    Backend(
        "triton",
        "mambakit's Triton GPU kernels",
        _probe_triton,
        {
            "selective_scan": ".triton_scan:selective_scan_triton",
            "selective_scan_fwd": ".triton_scan:selective_scan_fwd_triton",
            "selective_scan_bwd": ".triton_scan:selective_scan_bwd_triton",
            "selective_state_update": ".triton_step:selective_state_update_triton",
            "causal_conv1d": ".triton_conv:causal_conv1d_triton",
            "causal_conv1d_update": ".triton_conv:causal_conv1d_update_triton",
            "add_rms_norm": ".triton_norm:add_rms_norm_triton",
            "cross_scan": ".triton_cross_scan:cross_scan_triton",
            "cross_merge": ".triton_cross_scan:cross_merge_triton",
        },
        nondeterministic=frozenset({"selective_scan", "causal_conv1d"}),
        measured=True,
    )
)
# mambakit's NVRTC kernels: measured against the other GPU scans at each new shape (they lead at training shapes on
# the H100, fwd+bwd, and trail at small batch x dim with long sequences; bench/results/gpu_notes.md); without a
# measurement (CUDA-graph capture, torch.compile) `auto` takes the backends above first. They are deterministic under
# torch.use_deterministic_algorithms (backward v2 without atomics), so that is where `auto` takes them then.
register_backend(
    Backend(
        "cuda",
        "mambakit's CUDA C++ kernels, compiled at first use by NVRTC (no build step)",
        _probe_cuda,
        {
            "selective_scan": ".cuda_scan:selective_scan_cuda",
            "selective_scan_fwd": ".cuda_scan:selective_scan_fwd_cuda",
            "selective_scan_bwd": ".cuda_scan:selective_scan_bwd_cuda",
        },
        auto_ops=frozenset({"selective_scan"}),
        measured=True,
    )
)
register_backend(
    Backend(
        "torch",
        "pure PyTorch, chunked scan with a hand-written adjoint (CPU and GPU)",
        _always,
        {
            "selective_scan": ".torch_scan:selective_scan_torch",
            "selective_scan_fwd": ".torch_scan:selective_scan_fwd_torch",
            "selective_scan_bwd": ".torch_scan:selective_scan_bwd_torch",
            # The depthwise convolution is already one vectorised op; the decode steps are the reference's
            # math in fewer ops.
            "selective_state_update": ".torch_scan:selective_state_update_torch",
            "causal_conv1d": ".reference:causal_conv1d_ref",
            "causal_conv1d_update": ".torch_scan:causal_conv1d_update_torch",
            "add_rms_norm": ".reference:add_rms_norm_ref",
            # The cross-scan is a permutation of memory: torch's flips and transposes are already one copy each.
            "cross_scan": ".reference:cross_scan_ref",
            "cross_merge": ".reference:cross_merge_ref",
        },
    )
)
register_backend(
    Backend(
        "reference",
        "sequential loop in any float dtype (float64 included): the test oracle",
        _always,
        {
            "selective_scan": ".reference:selective_scan_ref",
            "selective_state_update": ".reference:selective_state_update_ref",
            "causal_conv1d": ".reference:causal_conv1d_ref",
            "causal_conv1d_update": ".reference:causal_conv1d_update_ref",
            "add_rms_norm": ".reference:add_rms_norm_ref",
            "cross_scan": ".reference:cross_scan_ref",
            "cross_merge": ".reference:cross_merge_ref",
        },
    )
)
