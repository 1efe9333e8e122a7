"""The record of a run, written by rank 0 only: metrics.jsonl, TensorBoard (when installed), a progress bar
(on a terminal) and `logging` lines."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import UserError
from .run_folder import write_run_files

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """One JSON object per line in out_dir/metrics.jsonl, each with its "step"; train records hold loss, lr,
    grad_norm, tokens_per_s; evaluation records hold the task's metrics prefixed "eval_".

    A resumed run first drops the records of steps after the checkpoint it resumes from (a crash can leave
    some), so the file reads as one uninterrupted run. Does nothing on processes other than rank 0.
    """

    def __init__(self, out_dir: Path, enabled: bool, start_step: int, total_steps: int) -> None:
        self.enabled = enabled
        self.path = out_dir / METRICS_NAME
        self._writer: Any = None
        self._progress: Progress | None = None
        if not enabled:
            return
        if start_step:
            _keep_records_until(self.path, start_step)
        self._file = open(self.path, "a" if start_step else "w")  # noqa: SIM115 (open for the run; see close)
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = start_step + 1 if start_step else None  # hide events a crash left after the checkpoint
            self._writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=purge_step)
        console = Console(stderr=True)
        if console.is_terminal:  # a bar redrawn in a log file or a pipe is only noise
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
            self._progress.start()

    def log(self, step: int, record: dict[str, float], prefix: str = "") -> None:
        """Append {"step": step, prefix + key: value ...} and mirror it to TensorBoard and the log."""
        if not self.enabled:
            return
        entry = {"step": step, **{prefix + key: value for key, value in record.items()}}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        if self._writer is not None:
            group = prefix.rstrip("_") or "train"
            for key, value in record.items():
                self._writer.add_scalar(f"{group}/{key}", value, step)
        logger.info("step %d | %s", step, " | ".join(f"{prefix}{key} {value:.4g}" for key, value in record.items()))

    def advance(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Move the progress bar to `step`."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=f"loss {loss:.4f} | {tokens_per_s:,.0f} tok/s")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()
        self._file.close()


def records_until(path: Path, step: int) -> list[str]:
    """The lines of a metrics file whose step is `step` or earlier, each ending in a newline; a line torn by a crash
    (not JSON) is dropped. A record without a numeric step, or a file that is not text, is a one-line UserError
    naming the file."""
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().decode().splitlines()
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not a metrics file (invalid UTF-8 at byte {error.start}); delete it and resume again"
        ) from None
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        record_step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(record_step, int | float) or isinstance(record_step, bool):
            raise UserError(
                f"{path} line {number}: a record without a numeric step ({line[:40]}); delete that line (or the "
                f"file) and resume again"
            )
        if record_step <= step:
            kept.append(line + "\n")
    return kept


def _keep_records_until(path: Path, step: int) -> None:
    """Drop the lines of a metrics file whose step is after `step` (atomically: a crash keeps the old file)."""
    if path.is_file():
        write_run_files(path.parent, {path.name: "".join(records_until(path, step))})
