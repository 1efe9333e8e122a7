"""Helper of tests/test_train.py, run under `torchrun --nproc-per-node 2`: trains a tiny language model with the
gloo backend and the given wrapper (ddp or fsdp), then each process writes REPORT_DIR/rank<RANK>.json with a
digest of its final parameters and the paths it created, opened for writing or renamed under OUT_DIR (seen
through a Python audit hook).

With ddp, fit creates and destroys the process group; with fsdp the script makes it, as a caller must who uses
the sharded model after fit (here: to gather it for the digest).

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_train.py OUT_DIR REPORT_DIR ddp|fsdp [DEVICE]

DEVICE (a TrainConfig device) is cpu unless given: cuda runs the same check over NCCL on a GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.train import Task, TrainConfig, fit


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every state-dict tensor's name and bytes (FSDP shards are gathered: every process calls)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    out_dir, report_dir, kind = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), sys.argv[3]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    written: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event not in ("open", "os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        else:
            path, writing = args[0], True
        if writing and isinstance(path, str | Path) and str(path).startswith(str(out_dir)):
            written.append(f"{event} {path}")

    sys.addaudithook(audit)
    torch.manual_seed(0)  # the same initial weights on both processes (DDP would broadcast rank 0's anyway)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=32))
    tokens = torch.randint(0, 32, (40, 12), generator=torch.Generator().manual_seed(1))
    examples = [{"input_ids": row, "labels": row} for row in tokens]
    config = TrainConfig(
        out_dir=out_dir,
        device=device,
        distributed=kind,
        max_steps=4,
        batch_size=4,
        grad_accum_steps=2,
        save_every=2,
        eval_every=2,
        log_every=1,
    )
    if kind == "fsdp":
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    result = fit(model, Task(), examples[:32], examples[32:], config=config)
    rank = int(os.environ["RANK"])
    report = {"digest": parameter_digest(model), "written": written, "status": result.status, "step": result.step}
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    if dist.is_initialized():
        # Every process past its last collective before any tears its connections down: gloo aborts a process
        # whose peer closed the group while it was still reading ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
