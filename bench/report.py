"""What every benchmark script records beside its numbers, and how it writes them: the machine, the versions, the
commit, a `.json` with everything and a `.md` with the tables. Imported by the scripts in bench/ (their
folder is on the path when one runs)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def log(*args: object) -> None:
    """print, flushed at once (a benchmark's output is read while it runs, or kept when it is killed)."""
    print(*args, flush=True)


def now(zone: bool = False) -> str:
    """The local date and time, "%Y-%m-%d %H:%M:%S" [with the time zone]."""
    return time.strftime("%Y-%m-%d %H:%M:%S" + (" %Z" if zone else ""))


def git_commit(given: str = "") -> str:
    """`given` when not empty (the GPU machine gets the working tree without .git, so the commit is passed in),
    else the short hash of the repository's HEAD, or "" where git cannot tell."""
    if given:
        return given
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def has_uncommitted_changes(path: str) -> bool:
    """Whether git sees changes, committed or not, under `path` (relative to the repository) since HEAD."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return bool(status.stdout.strip())


def version(package: str) -> str:
    """The version of `package`: its module's `__version__` once imported, else the installed distribution's, else
    "not installed"."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return installed_version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The processor's model name (Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor()
            )
    except OSError:
        return platform.processor()


def gpu_machine() -> dict[str, str]:
    """The GPU's name, the versions of torch, triton and Python, and the date: the head of a GPU script's results."""
    import torch

    return {
        "device": torch.cuda.get_device_name(),
        "torch": version("torch"),
        "triton": version("triton"),
        "python": platform.python_version(),
        "date": now(),
    }


def compressed_bits(compress: Callable[[bytes], int], train: bytes, test: bytes) -> dict[str, float]:
    """Bits per byte (or per base) of `test` under a compressor (`compress`: data -> compressed size): alone, and
    given `train` (the size it adds after the training text), the fair match for a model trained on `train`."""
    alone = compress(test) * 8 / len(test)
    given_train = (compress(train + test) - compress(train)) * 8 / len(test)
    return {"alone": alone, "given_train": given_train}


def write(
    out_dir: Path,
    name: str,
    data: object,
    markdown: str | None = None,
    *,
    indent: int = 2,
    default: Callable[[Any], Any] = str,
) -> None:
    """out_dir/<name>.json with `data` (values json cannot write go through `default`), and out_dir/<name>.md with
    `markdown` when given; out_dir is made if missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=indent, default=default) + "\n")
    if markdown is not None:
        (out_dir / f"{name}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
