"""Which operations make the host wait for the GPU (a read-back such as .item(), bool(), .tolist(), .cpu(), or a
synchronizing copy), with the Python frames that called them: torch's sync debug mode, its warnings recorded
instead of printed. For the GPU profiles (bench/gpu_profile.py --block, bench/text_gpu.py --profile-steps)."""

from __future__ import annotations

import collections
import contextlib
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch


@contextlib.contextmanager
def recorded_host_waits(frames: int = 4) -> Iterator[collections.Counter[str]]:
    """Count, by message and the innermost `frames` frames outside torch, the synchronizing operations run inside
    the block (on any thread: a backward's waits have no Python frames of their own)."""
    waits: collections.Counter[str] = collections.Counter()

    def record(message: Warning | str, *_: object, **__: object) -> None:
        stack = [
            f"{Path(f.filename).name}:{f.lineno}"
            for f in traceback.extract_stack()[:-1]
            if "torch" not in f.filename and f.filename != warnings.__file__
        ]
        where = " <- ".join(reversed(stack[-frames:])) or "(no Python frames: autograd's thread)"
        waits[f"{str(message).splitlines()[0][:60]} at {where}"] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            yield waits
    finally:
        torch.cuda.set_sync_debug_mode("default")


def waits_lines(waits: collections.Counter[str], limit: int = 15) -> list[str]:
    """The recorded waits, most frequent first, one line each."""
    return [f"{count:6d}  {where}" for where, count in waits.most_common(limit)]
