"""One Mamba mixer's forward + backward on the CPU, the fused path (mambakit.ops.mamba_inner) against the separate
ops, on the `torch` backend: the measurement behind `Mamba.fuse_inner`'s default (fused on CUDA only). Also the
bytes autograd keeps for the backward in each path.

    PYTHONPATH=. .venv/bin/python bench/mixer_cpu.py [--batch 4] [--length 512] [--d-model 128] [--repeats 12]

The two paths alternate, one step each, so a load change on the machine hits both; the median and minimum of each
are reported. Writes DIR/mixer_cpu.json and .md (DIR: bench/results)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import report

from mambakit.nn.mixer import Mamba


def saved_megabytes(mixer: Mamba, hidden: torch.Tensor) -> float:
    """MB that autograd keeps for the backward of one call (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(hidden)
    return sum(storages.values()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    mixer = Mamba(args.d_model, scan_backend="torch")
    hidden = torch.randn(args.batch, args.length, args.d_model, requires_grad=True)
    seconds: dict[str, list[float]] = {"fused": [], "separate": []}
    saved: dict[str, float] = {}
    for name in seconds:
        mixer.fuse_inner = name == "fused"
        saved[name] = saved_megabytes(mixer, hidden)
        mixer(hidden).sum().backward()  # warm-up
    for _ in range(args.repeats):
        for name, times in seconds.items():
            mixer.fuse_inner = name == "fused"
            started = time.perf_counter()
            mixer(hidden).sum().backward()
            times.append(time.perf_counter() - started)
    rows = {
        name: {
            "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "saved_MB": saved[name],
        }
        for name, times in seconds.items()
    }
    shape = f"B{args.batch} L{args.length} d_model {args.d_model} (d_inner {mixer.d_inner}, N {mixer.d_state})"
    data = {
        "cpu": report.cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": report.version("torch"),
        "commit": report.git_commit(),
        "date": report.now(),
        "shape": shape,
        "repeats": args.repeats,
        "rows": rows,
    }
    lines = [
        f"# One Mamba mixer, forward + backward, CPU (`torch` backend): fused vs separate ops, {shape}",
        "",
        f"{data['cpu']}, {data['threads']} threads, torch {data['torch']}, commit {data['commit']}, {data['date']}; "
        f"{args.repeats} alternating steps each.",
        "",
        "| path | median ms | min ms | kept for the backward (MB) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['saved_MB']:.1f} |"
            for name, row in rows.items()
        ),
    ]
    report.write(args.out, "mixer_cpu", data, "\n".join(lines))
    report.log("\n".join(lines))


if __name__ == "__main__":
    main()
