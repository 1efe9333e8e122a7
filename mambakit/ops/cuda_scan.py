"""The `cuda` backend's selective scan: the forward kernel of cuda/selective_scan.cu, compiled at first use by
NVRTC for the GPU at hand (mambakit.ops.nvrtc; no build step, no toolkit).

Until its backward kernel exists, a call that needs gradients runs on the Triton kernels, and so do the cases
the kernel does not take yet: time-invariant B/C, float64, L = 0 and more than MAX_STATES states.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from . import nvrtc

SOURCE_FILE = Path(__file__).parent / "cuda" / "selective_scan.cu"
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
#: Steps per lane: a chunk is 32 lanes x ITEMS steps; B and C of a chunk take 2 x N x 32 x ITEMS fp32 of shared memory.
ITEMS = 8
#: Channels (warps) per CTA, sharing the chunk's B and C.
CHANNELS = 4
MAX_STATES = 64


@functools.cache
def source() -> str:
    """The kernel source, read once."""
    return SOURCE_FILE.read_text()


def kernel_name(
    dtype_code: int,
    states: int,
    items: int,
    channels: int,
    has_z: bool,
    has_D: bool,
    has_delta_bias: bool,
    softplus: bool,
    has_initial_state: bool,
    return_last_state: bool,
) -> str:
    """The template instantiation of the forward kernel for one combination of settings."""
    flags = (has_z, has_D, has_delta_bias, softplus, has_initial_state, return_last_state)
    return (
        f"selective_scan_fwd<{dtype_code}, {states}, {items}, {channels}, "
        + ", ".join("true" if flag else "false" for flag in flags)
        + ">"
    )


#: The variants a Mamba layer runs (z, D, delta bias, softplus; no states in or out), by input dtype name.
LAYER_VARIANTS = {
    name: kernel_name(code, 16, ITEMS, CHANNELS, True, True, True, True, False, False)
    for name, code in (("fp32", 0), ("bf16", 1), ("fp16", 2))
}


def compile_report(architecture: int) -> list[tuple[str, float | None, float]]:
    """For each of LAYER_VARIANTS on sm_`architecture`: (dtype, seconds of its first compile or None when it
    was already cached, seconds to read it back from the disk cache)."""
    rows = []
    for dtype, name in LAYER_VARIANTS.items():
        first = nvrtc.compile_kernels(source(), [name], architecture)
        hit = nvrtc.compile_kernels(source(), [name], architecture)
        rows.append((dtype, None if first.cached else first.seconds, hit.seconds))
    return rows


def _channels_per_cta(dim: int, groups: int) -> int:
    """CHANNELS, or fewer so that no CTA spans two B/C groups."""
    if groups == 1:
        return CHANNELS
    per_group = dim // groups
    return next(c for c in (CHANNELS, 2, 1) if per_group % c == 0)


def _falls_back(tensors: tuple[Tensor | None, ...], B: Tensor, states: int, length: int) -> bool:
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return (
        needs_grad
        or B.dim() == 2
        or length == 0
        or states > MAX_STATES
        or any(t is not None and t.dtype == torch.float64 for t in tensors)
    )


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the NVRTC-compiled forward kernel; same contract as `mambakit.ops.selective_scan`
    (arguments already checked). Calls that need gradients go to the Triton kernels."""
    batch, dim, length = u.shape
    states = A.shape[1]
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if _falls_back(tensors, B, states, length):
        from .triton_scan import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state
        )
    dtype = u.dtype
    u = _unit_stride(u)
    delta, z = _unit_stride(delta.to(dtype)), None if z is None else _unit_stride(z.to(dtype))
    groups = 1 if B.dim() == 3 else B.shape[1]
    B = B.reshape(batch, groups, states, length).float().contiguous()
    C = C.reshape(batch, groups, states, length).float().contiguous()
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    initial_state = None if initial_state is None else initial_state.float().contiguous()
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    last_state = torch.empty(batch, dim, states, device=u.device, dtype=torch.float32) if return_last_state else None

    channels = _channels_per_cta(dim, groups)
    name = kernel_name(
        DTYPE_CODES[dtype],
        states,
        ITEMS,
        channels,
        z is not None,
        D is not None,
        delta_bias is not None,
        delta_softplus,
        initial_state is not None,
        return_last_state,
    )
    kernel = _kernel(name, u.device.index if u.device.index is not None else torch.cuda.current_device())
    strides = [ctypes.c_int64(s) for t in (u, delta, z if z is not None else u, out) for s in t.stride()[:2]]
    arguments = [
        pointer(u),
        pointer(delta),
        pointer(A),
        pointer(B),
        pointer(C),
        pointer(D),
        pointer(z),
        pointer(delta_bias),
        pointer(initial_state),
        pointer(out),
        pointer(last_state),
        ctypes.c_int(dim),
        ctypes.c_int(length),
        ctypes.c_int(dim // groups),
        *strides,
        ctypes.c_int64(B.stride(0)),
        ctypes.c_int64(B.stride(1)),
    ]
    shared_bytes = 2 * states * 32 * ITEMS * 4
    kernel(((dim + channels - 1) // channels, batch, 1), (32 * channels, 1, 1), arguments, shared_bytes)
    return (out, last_state) if return_last_state else out  # type: ignore[return-value]


def pointer(t: Tensor | None) -> ctypes.c_void_p:
    """A tensor's device address as a kernel argument (NULL for an absent optional one)."""
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def _unit_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.cache
def _kernel(name: str, device_index: int) -> nvrtc.Kernel:
    """The kernel instantiation `name` on one GPU: compiled (or read from the disk cache) and loaded once."""
    major, minor = torch.cuda.get_device_capability(device_index)
    compiled = nvrtc.compile_kernels(source(), [name], 10 * major + minor)
    return nvrtc.load_kernel(compiled, name, torch.device("cuda", device_index))
