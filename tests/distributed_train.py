"""Helper of tests/test_train.py and tests/test_scale_out.py, run under torchrun: trains with the gloo backend,
then each process writes REPORT_DIR/rank<RANK>.json with a digest of its final parameters, how the run ended and
the paths it created, opened for writing or renamed under a watched folder (seen through a Python audit hook).

A tiny language model through `mambakit.train.fit`, with the given wrapper (ddp or fsdp); the watched folder is
OUT_DIR. With ddp, fit creates and destroys the process group; with fsdp the script makes it, as a caller must who
uses the sharded model after fit (here: to gather it for the digest).

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_train.py OUT_DIR REPORT_DIR ddp|fsdp [DEVICE]
        [--max-steps N] [--grad-accum-steps N] [--stop-at STEP] [--resume]

DEVICE (a TrainConfig device) is cpu unless given: cuda runs the same check over NCCL on a GPU machine.
--stop-at sends rank 0 a SIGTERM after that step (the run saves last/ and stops); --resume continues out_dir/last.
`tiny_run` builds the same run in the test process, so a test can compare against it on one process.

Or the CLI, `mambakit.cli.main(ARGS)` (e.g. `train text --out ...`); the digest is of the model fit trained:

    python -m torch.distributed.run ... tests/distributed_train.py --cli REPORT_DIR WATCHED_DIR ARGS...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils.data import Dataset

from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.train import StepInfo, Task, TrainConfig, TrainResult, fit


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a rendezvous or master port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every state-dict tensor's name and bytes (FSDP shards are gathered: every process calls)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RecordingDataset(Dataset):
    """A map-style dataset that records the index of every example read."""

    def __init__(self, examples: list[dict[str, torch.Tensor]], seen: list[int]) -> None:
        self.examples, self.seen = examples, seen

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.seen.append(index)
        return self.examples[index]


def tiny_run(
    out_dir: Path, *, stop_at: int | None = None, seen: list[int] | None = None, **changes: Any
) -> tuple[MambaLMHeadModel, TrainResult]:
    """Train the tiny language model (32 training, 8 evaluation examples of 12 tokens; batch_size 4,
    grad_accum_steps 2, 4 steps with a 2-step warm-up, then cosine) in this process's part of the run, with
    `changes` to that TrainConfig; the model and how the run ended. `seen`, when given, records the indices of the
    training examples read, in order."""
    torch.manual_seed(0)  # the same initial weights on every process (DDP would broadcast rank 0's anyway)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=32))
    tokens = torch.randint(0, 32, (40, 12), generator=torch.Generator().manual_seed(1))
    examples = [{"input_ids": row, "labels": row} for row in tokens]
    config = TrainConfig(
        out_dir=out_dir,
        device="cpu",
        max_steps=4,
        batch_size=4,
        grad_accum_steps=2,
        warmup_steps=2,
        save_every=2,
        eval_every=2,
        log_every=1,
    ).replace(**changes)
    train_data = examples[:32] if seen is None else RecordingDataset(examples[:32], seen)
    callbacks = [] if stop_at is None else [_sigterm_at(stop_at)]
    return model, fit(model, Task(), train_data, examples[32:], config=config, callbacks=callbacks)


def _sigterm_at(step: int):
    def callback(info: StepInfo) -> None:
        if info.step == step and int(os.environ.get("RANK", "0")) == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("kind", choices=["ddp", "fsdp"])
    parser.add_argument("device", nargs="?", default="cpu")
    parser.add_argument("--grad-accum-steps", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args(argv)


def _record_writes(watched: Path) -> list[str]:
    """A list that an audit hook fills, from now on, with every creation, write, rename or removal under
    `watched`."""
    written: list[str] = []

    def audit(event: str, audited: tuple[Any, ...]) -> None:
        if event not in ("open", "os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            return
        if event == "open":
            path, mode, flags = audited
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        else:
            path, writing = audited[0], True
        if writing and isinstance(path, str | Path) and str(path).startswith(str(watched)):
            written.append(f"{event} {path}")

    sys.addaudithook(audit)
    return written


def _write_report(report_dir: Path, report: dict[str, Any]) -> None:
    (report_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


def _run_cli(report_dir: Path, watched: Path, argv: list[str]) -> int:
    """`mambakit.cli.main(argv)`, reporting the parameters fit trained and the writes under `watched`."""
    import mambakit.train
    from mambakit.cli import main as cli_main

    written = _record_writes(watched.resolve())
    report: dict[str, Any] = {"written": written}
    train = mambakit.train.fit

    def fit_and_digest(model: torch.nn.Module, *args: Any, **kwargs: Any) -> TrainResult:
        result = train(model, *args, **kwargs)
        report.update(digest=parameter_digest(model), status=result.status, step=result.step)
        return result

    mambakit.train.fit = fit_and_digest  # the CLI imports fit when it trains
    report["exit_code"] = cli_main(argv)
    _write_report(report_dir.resolve(), report)
    return report["exit_code"]


def _exit_at_once(code: int) -> None:
    """Exit without the interpreter's finalization. A gloo worker thread may still be releasing the tensors of a
    collective that has finished, which takes the GIL, and a thread that asks for the GIL while the interpreter
    finalizes aborts the process ("terminate called without an active exception", seen under load after FSDP's
    all-gathers; pytorch/pytorch#179291): the run is over and reported by then, so there is nothing to finalize."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    if sys.argv[1:2] == ["--cli"]:
        _exit_at_once(_run_cli(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]))
    args = _parse(sys.argv[1:])
    written = _record_writes(args.out_dir.resolve())
    if args.kind == "fsdp":
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    model, result = tiny_run(
        args.out_dir.resolve(),
        stop_at=args.stop_at,
        distributed=args.kind,
        device=args.device,
        grad_accum_steps=args.grad_accum_steps,
        resume=args.resume,
        max_steps=args.max_steps,
    )
    report = {
        "digest": parameter_digest(model),
        "written": written,
        "status": result.status,
        "step": result.step,
        "epoch": result.epoch,
    }
    _write_report(args.report_dir.resolve(), report)
    if dist.is_initialized():
        # Every process past its last collective before any tears its connections down: gloo aborts a process
        # whose peer closed the group while it was still reading ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    _exit_at_once(0)


if __name__ == "__main__":
    main()
