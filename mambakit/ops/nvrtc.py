"""CUDA C++ compiled at run time: source -> NVRTC -> a cubin for the GPU's architecture, cached on disk, loaded
with the driver API and launched on torch's current stream (so it is ordered with torch's work and can be
captured in a CUDA graph). Nothing is built at install time: NVRTC and the driver bindings come with torch's
CUDA wheels (`cuda-bindings` and the NVRTC library); no toolkit and no headers are needed, so the kernels are
header-free.

The cache lives in $MAMBAKIT_CACHE_DIR (default ~/.cache/mambakit)/cubin, one file per (source, options, kernel
names, architecture, NVRTC version), written atomically.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_ENV_VAR = "MAMBAKIT_CACHE_DIR"
#: Options every kernel is compiled with: C++17, fast math (ex2/lg2/rcp.approx, as mamba-ssm's --use_fast_math).
BASE_OPTIONS = ("--std=c++17", "--use_fast_math", "--extra-device-vectorization")
#: Oldest architecture the kernels target (cp.async, bf16 conversions).
MIN_ARCHITECTURE = 80


class NvrtcError(RuntimeError):
    """A kernel failed to compile (the message holds NVRTC's log) or a driver call failed."""


@dataclass(frozen=True)
class CompiledKernels:
    """One compiled source: its cubin, the mangled name of each requested kernel, and how it was obtained."""

    cubin: bytes
    lowered: dict[str, str]
    seconds: float
    """Compile time, or the time to read the cache file when `cached`."""
    cached: bool


def cache_dir() -> Path:
    """Where compiled cubins are kept."""
    root = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "mambakit"
    return Path(root) / "cubin"


def _bindings() -> tuple[Any, Any]:
    from cuda.bindings import driver, nvrtc  # type: ignore[import-untyped]

    return nvrtc, driver


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library that compiles the kernels."""
    nvrtc, _ = _bindings()
    major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


@functools.cache
def supported_architectures() -> tuple[int, ...]:
    """The sm_XY values this NVRTC can compile for (e.g. 80, 90)."""
    nvrtc, _ = _bindings()
    return tuple(_check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def unavailable_reason(device: torch.device) -> str | None:
    """None when kernels can be compiled and run on `device`, else why not (one line, with what to do)."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU and none is visible; use backend='torch' (fast, pure PyTorch) on CPU"
    if device.type != "cuda":
        return f"it needs CUDA tensors and these are on {device.type}; use backend='torch'"
    try:
        version = nvrtc_version()
    except Exception as error:  # a missing library surfaces as several exception types
        return f"NVRTC cannot be loaded ({type(error).__name__}: {error}); install torch's CUDA build, which brings it"
    major, minor = torch.cuda.get_device_capability(device)
    architecture = 10 * major + minor
    if architecture < MIN_ARCHITECTURE:
        return f"the GPU is sm_{architecture}; the kernels need sm_{MIN_ARCHITECTURE} or newer: use backend='triton'"
    if architecture not in supported_architectures():
        return f"NVRTC {version[0]}.{version[1]} cannot compile for this GPU (sm_{architecture}); update torch"
    return None


def compile_kernels(
    source: str, names: Sequence[str], architecture: int, options: Sequence[str] = ()
) -> CompiledKernels:
    """Compile `source` for sm_`architecture` and return the cubin with the mangled names of `names` (kernel
    names or template instantiations such as "scan<float, 16>"); cached on disk. Works without a GPU."""
    options = (*BASE_OPTIONS, f"--gpu-architecture=sm_{architecture}", *options)
    key = hashlib.sha256(json.dumps([source, list(options), list(names), nvrtc_version()]).encode()).hexdigest()[:32]
    cubin_file, names_file = cache_dir() / f"{key}.cubin", cache_dir() / f"{key}.json"
    started = time.perf_counter()
    if cubin_file.is_file() and names_file.is_file():
        try:
            lowered = json.loads(names_file.read_text())
            return CompiledKernels(cubin_file.read_bytes(), lowered, time.perf_counter() - started, cached=True)
        except (OSError, ValueError):
            pass  # a damaged entry is compiled again and replaced
    cubin, lowered, _ = _compile(source, names, options)
    seconds = time.perf_counter() - started
    _write_atomically(cubin_file, cubin)
    _write_atomically(names_file, json.dumps(lowered).encode())
    return CompiledKernels(cubin, lowered, seconds, cached=False)


@dataclass(frozen=True)
class KernelUsage:
    """What ptxas reports for one kernel: registers a thread, and bytes of local memory a thread (stack frame;
    registers spilled to it, stored and loaded)."""

    registers: int
    stack_bytes: int
    spill_bytes: int


def ptxas_usage(source: str, names: Sequence[str], architecture: int) -> dict[str, KernelUsage]:
    """ptxas's resource report for each of `names` compiled for sm_`architecture` (not cached: for tests and
    reports, not launches). Works without a GPU."""
    options = (*BASE_OPTIONS, f"--gpu-architecture=sm_{architecture}", "--ptxas-options=-v")
    _, lowered, log = _compile(source, names, options)
    usage, kernel, frame = {}, None, (0, 0)
    for line in log.splitlines():
        if match := re.search(r"Compiling entry function '(\S+)'", line):
            kernel = match.group(1)
        elif match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            frame = (int(match.group(1)), int(match.group(2)) + int(match.group(3)))
        elif (match := re.search(r"Used (\d+) registers", line)) and kernel is not None:
            usage[kernel] = KernelUsage(int(match.group(1)), *frame)
    return {name: usage[mangled] for name, mangled in lowered.items()}


def _compile(source: str, names: Sequence[str], options: Sequence[str]) -> tuple[bytes, dict[str, str], str]:
    """The cubin, the mangled name of each of `names` and NVRTC's log (ptxas's report with --ptxas-options=-v)."""
    nvrtc, _ = _bindings()
    program = _check(nvrtc.nvrtcCreateProgram(source.encode(), b"mambakit.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        for name in names:
            _check(nvrtc.nvrtcAddNameExpression(program, name.encode()), "nvrtcAddNameExpression")
        (result,) = nvrtc.nvrtcCompileProgram(program, len(options), [option.encode() for option in options])
        size = _check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        # Writable buffers: NVRTC writes into what it is given, and `b" " * 1` is CPython's shared b" " itself
        # (an empty log has size 1), which writing into would turn into b"\x00" for the whole interpreter.
        log = bytearray(size)
        _check(nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            message = log.rstrip(b"\x00").decode(errors="replace")
            raise NvrtcError(f"NVRTC could not compile the kernels ({result.name}):\n{message}")
        size = _check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = bytearray(size)
        _check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        lowered = {
            name: _check(nvrtc.nvrtcGetLoweredName(program, name.encode()), "nvrtcGetLoweredName").decode()
            for name in names
        }
        return bytes(cubin), lowered, log.rstrip(b"\x00").decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _check(result: Any, call: str) -> Any:
    """The value(s) of a cuda.bindings call after its status; NvrtcError on failure."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        raise NvrtcError(f"{call} failed: {getattr(status, 'name', status)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Kernel:
    """A compiled kernel loaded on one device, launched on torch's current stream."""

    def __init__(self, function: Any, name: str) -> None:
        self.function, self.name = function, name
        self._shared_limit = 48 * 1024

    def __call__(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        arguments: Sequence[ctypes._CData],
        shared_bytes: int = 0,
    ) -> None:
        """Launch with `arguments` given as exact ctypes values (c_void_p for pointers, c_int, c_int64,
        c_float, ...), in the kernel's parameter order."""
        _, driver = _bindings()
        if shared_bytes > self._shared_limit:
            attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(driver.cuFuncSetAttribute(self.function, attribute, shared_bytes), "cuFuncSetAttribute")
            self._shared_limit = shared_bytes
        pointers = (ctypes.c_void_p * len(arguments))(*(ctypes.addressof(value) for value in arguments))
        stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
        _check(
            driver.cuLaunchKernel(self.function, *grid, *block, shared_bytes, stream, ctypes.addressof(pointers), 0),
            f"cuLaunchKernel({self.name})",
        )


_LOADED: dict[tuple[str, int, str], Kernel] = {}
_LOCK = threading.Lock()


def load_kernel(compiled: CompiledKernels, name: str, device: torch.device) -> Kernel:
    """Kernel `name` of `compiled` on `device` (the module is loaded once per device and kept)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (hashlib.sha256(compiled.cubin).hexdigest(), index, name)
    with _LOCK:
        if key not in _LOADED:
            _, driver = _bindings()
            with torch.cuda.device(index):
                torch.empty(1, device=f"cuda:{index}")  # makes torch's primary context current on this thread
                module = _check(driver.cuModuleLoadData(compiled.cubin), "cuModuleLoadData")
                function = _check(
                    driver.cuModuleGetFunction(module, compiled.lowered[name].encode()), "cuModuleGetFunction"
                )
            _LOADED[key] = Kernel(function, name)
        return _LOADED[key]
