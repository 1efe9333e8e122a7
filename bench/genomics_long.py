"""Long-context DNA training on one GPU: step time and peak memory of a next-base LM (6 layers x d_model 128, the
Mamba paper's DNA model) at 2^14 .. 2^20 bp, batch 1, AdamW, bf16 autocast, on real sequence from the embedded
C. diphtheriae genome. Every scan backend usable here runs side by side (mambakit's own kernels and mamba-ssm's
CUDA kernels where installed; the pure-PyTorch backend only up to --torch-max-length, as its per-step Python
loop makes 1M-step scans take minutes).

    python bench/genomics_long.py [--lengths 14,15,16,17,18,19,20] [--out bench/results]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from mambakit.apps.genomics.models import create_model, genomics_config
from mambakit.apps.genomics.prepare import GENOME
from mambakit.apps.genomics.readers import read_sequences
from mambakit.apps.genomics.tokenizer import DNATokenizer

from mambakit.ops import available_backends
from mambakit.ops.timing import median_ms
from mambakit.train import parameter_groups

sys.path.insert(0, str(Path(__file__).parent))
import report  # beside this script, importable once its folder is on the path


def step_time_and_memory(backend: str, ids: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ms of one full training step (forward, backward, AdamW) and the peak GiB it allocates."""
    torch.manual_seed(0)
    tokenizer = DNATokenizer()
    model = create_model("pretrain", genomics_config(tokenizer, d_model=128, n_layer=6), scan_backend=backend).cuda()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, fused=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return median_ms(step, repeats, "cuda"), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="14,15,16,17,18,19,20", help="log2 of the sequence lengths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-max-length", type=int, default=1 << 15)
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    parser.add_argument("--commit", default="", help="commit the tree was checked out at (default: git HEAD)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/genomics_long.py needs a CUDA GPU")
    genome = DNATokenizer().encode(read_sequences(GENOME)[0].sequence)
    backends = [name for name, reason in available_backends("cuda").items() if reason is None and name != "reference"]
    rows = []
    for power in (int(p) for p in args.lengths.split(",")):
        length = 1 << power
        ids = torch.from_numpy(genome[:length].astype("int64"))[None].cuda()
        for backend in backends:
            if backend == "torch" and length > args.torch_max_length:
                continue
            began = time.perf_counter()
            try:
                ms, gib = step_time_and_memory(backend, ids, args.repeats)
                rows.append({"length": length, "backend": backend, "step_ms": ms, "peak_gib": gib})
            except torch.cuda.OutOfMemoryError:
                rows.append({"length": length, "backend": backend, "error": "out of memory"})
            torch.cuda.empty_cache()
            print(f"L={length:>8} {backend:>9}: {rows[-1]} ({time.perf_counter() - began:.0f} s)", flush=True)
    commit = report.git_commit(args.commit)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "model": "6 layers x d_model 128, d_state 16, causal LM",
        "batch": 1,
        "precision": "bf16 autocast, fp32 parameters, fused AdamW",
        "rows": rows,
    }
    lines = [
        f"# Long-context DNA training step ({results['device']}, torch {results['torch']}, commit {commit})",
        "",
        f"{results['model']}, batch 1, {results['precision']}; median of {args.repeats} steps.",
        "",
        "| length (bp) | backend | step (ms) | peak memory (GiB) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row['step_ms']:.1f}", f"{row['peak_gib']:.2f}"] if "error" not in row else [row["error"], ""]
        lines.append(f"| {row['length']:,} | {row['backend']} | {' | '.join(cells)} |")
    report.write(args.out, "genomics_long", results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
