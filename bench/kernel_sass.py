"""What ptxas made of the cuda backend's training kernels, without a GPU: for each kernel a Mamba layer runs
(`mambakit.ops.cuda_scan.LAYER_VARIANTS`, one dtype), its registers and spills, its SASS instructions, and each
loop of its SASS (a backward branch) with the instructions in one pass, by kind. The state loops (the innermost
loops with the lane scan's SHFLs and the MUFU.EX2 of a_i) are where a kernel spends its time: their instructions
per state and chunk are a count that can be followed from commit to commit on a machine with no GPU, beside the
timings of bench/gpu.py, which need one.

    PYTHONPATH=. .venv/bin/python bench/kernel_sass.py [--dtype bf16] [--arch 90] [--out bench/results/x.json]

It reads the cubin with cuobjdump, which Triton's wheel ships (triton/backends/nvidia/bin); NVRTC compiles the
kernels as at run time (mambakit.ops.nvrtc), so this needs torch's CUDA build, not a GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mambakit.ops import cuda_scan, nvrtc

INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)")


def cuobjdump() -> Path:
    """Triton's cuobjdump; a one-line error where Triton is not installed."""
    try:
        import triton
    except ImportError:
        sys.exit("kernel_sass needs cuobjdump, which ships with triton: pip install triton")
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sass(name: str, architecture: int) -> list[tuple[int, str]]:
    """(address, instruction) of kernel `name` compiled for sm_`architecture`."""
    compiled = nvrtc.compile_kernels(cuda_scan.source(), [name], architecture)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.cubin)
        cubin.flush()
        listing = subprocess.run(
            [str(cuobjdump()), "-sass", cubin.name], capture_output=True, text=True, check=True
        ).stdout
    return [(int(m.group(1), 16), m.group(2)) for line in listing.splitlines() if (m := INSTRUCTION.match(line))]


def opcode(instruction: str) -> str:
    """The operation without its predicate and modifiers: "@!P0 FFMA.FTZ R1, ..." -> "FFMA"."""
    words = instruction.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def loops(instructions: list[tuple[int, str]]) -> list[dict[str, object]]:
    """Every backward branch's loop: its address range, instructions in one pass, and their kinds."""
    found = []
    for address, instruction in instructions:
        branch = BRANCH.search(instruction)
        if branch is None or int(branch.group(1), 16) >= address:
            continue
        start = int(branch.group(1), 16)
        body = [text for at, text in instructions if start <= at <= address]
        kinds = collections.Counter(opcode(text) for text in body)
        found.append({"from": hex(start), "to": hex(address), "instructions": len(body), "kinds": dict(kinds)})
    return found


def report(dtype: str, architecture: int) -> list[dict[str, object]]:
    """One record per kernel of LAYER_VARIANTS[dtype]."""
    records = []
    for name in cuda_scan.LAYER_VARIANTS[dtype]:
        usage = nvrtc.ptxas_usage(cuda_scan.source(), [name], architecture)[name]
        instructions = sass(name, architecture)
        records.append(
            {
                "kernel": name,
                "registers": usage.registers,
                "spill_bytes": usage.spill_bytes,
                "instructions": len(instructions),
                "loops": loops(instructions),
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=sorted(cuda_scan.LAYER_VARIANTS))
    parser.add_argument("--arch", type=int, default=90, help="the sm_XY to compile for")
    parser.add_argument("--out", type=Path, help="also write the records as JSON here")
    args = parser.parse_args()
    records = report(args.dtype, args.arch)
    for record in records:
        print(
            f"{record['kernel']}: {record['registers']} registers, {record['spill_bytes']} bytes spilled, "
            f"{record['instructions']} instructions"
        )
        for loop in record["loops"]:
            kinds = loop["kinds"]
            shown = " ".join(f"{k} {kinds[k]}" for k in ("MUFU", "SHFL", "FFMA", "FMUL", "LDS", "LDG") if k in kinds)
            print(f"  loop {loop['from']}..{loop['to']}: {loop['instructions']} instructions ({shown})")
    if args.out:
        args.out.write_text(json.dumps({"dtype": args.dtype, "arch": args.arch, "kernels": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
