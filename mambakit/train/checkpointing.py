"""Training checkpoints: a model checkpoint directory plus the trainer's state, replaced atomically.

    out_dir/last/  and  out_dir/best/
        config.json, model.safetensors, extra files   what mambakit.models.save_pretrained writes
        trainer_state.pt                              optimizer, scheduler, step, epoch, data position, best metric,
                                                      RNG states of every process (torch.load, weights_only)
        train_config.json                             the TrainConfig of the run

trainer_state.pt does not depend on how the run was sharded, so a run resumes on any world size, with DDP or
FSDP: the optimizer state is a full (gathered) state dict, written by rank 0 alone through torch.distributed's
state-dict API and sharded again on load; the data position is `world_size` processes having each consumed
`examples_in_epoch` examples of their share of `epoch`, dealt from `epoch_start` (see `data.deal_position`).

A directory is written whole into a temporary sibling (`.last.tmp-<random>`), its files fsynced, then swapped in
by two renames: the old one to `.last.old`, the new one to `last`. At every moment `last` or, between the two
renames, `.last.old` holds a complete checkpoint (`complete_copy` finds it); `recover` puts `.last.old` back after
a crash there.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..models import save_pretrained
from ..models.checkpoint import fsync_directory
from ..models.protocol import TrainableModel
from .config import TrainConfig

TRAINER_STATE_NAME = "trainer_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
#: What resuming reads from a trainer state; a file without one of them was not written by this trainer.
_STATE_KEYS = ("step", "epoch", "examples_in_epoch", "best_metric", "best_step", "optimizer", "scheduler", "rng")


def write_checkpoint(
    directory: Path,
    model: TrainableModel,
    extra_files: Mapping[str, bytes | str] | None,
    trainer_state: dict[str, Any],
    config: TrainConfig,
) -> None:
    """Atomically replace `directory` with a checkpoint of `model`, `trainer_state` and `config`."""
    tidy(directory)
    old = _old(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex}")
    try:
        save_pretrained(model, tmp, dict(extra_files or {}))
        with open(tmp / TRAINER_STATE_NAME, "wb") as file:
            torch.save(trainer_state, file)
            _sync(file)
        with open(tmp / TRAIN_CONFIG_NAME, "w") as file:
            file.write(config.to_json())
            _sync(file)
        fsync_directory(tmp)
        if directory.exists():
            directory.rename(old)
            fsync_directory(directory.parent)
        tmp.rename(directory)
        fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        recover(directory)  # failed between the two renames: the old checkpoint goes back at once
        raise
    shutil.rmtree(old, ignore_errors=True)


def tidy(directory: Path) -> None:
    """Finish or clear what a crash in an earlier write of `directory` left (`recover`, then delete the temporary
    and old copies), never the only complete copy."""
    recover(directory)
    shutil.rmtree(_old(directory), ignore_errors=True)
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def recover(directory: Path) -> None:
    """Finish a swap that a crash interrupted: bring back `.name.old` when `name` is missing."""
    old = _old(directory)
    if not directory.exists() and old.is_dir():
        old.rename(directory)


def complete_copy(directory: Path) -> Path | None:
    """`directory`, or its `.name.old` where a crash between a swap's two renames left the only complete copy;
    None when there is neither."""
    if directory.is_dir():
        return directory
    old = _old(directory)
    return old if old.is_dir() else None


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state saved in checkpoint `directory` (read without executing pickled code); a file that is
    unreadable or lacks what resuming needs is a one-line UserError naming it."""
    path = directory / TRAINER_STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; {directory} is not a training checkpoint") from None
    except Exception as error:  # the unpickler fails on bad bytes with many exception types
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            raise UserError(
                f"{path}: the trainer state holds objects that only code run from the file could rebuild, which "
                f"mambakit never does (it was not written by mambakit's trainer); restore it or start a new run"
            ) from None
        raise UserError(
            f"{path}: unreadable trainer state ({type(error).__name__}); the file may be truncated "
            f"or corrupt: restore it or start a new run"
        ) from None
    missing = [key for key in _STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        problem = f"lacks {', '.join(missing)}"
    else:
        invalid = [key for key, valid in _STATE_VALUES.items() if key in state and not valid(state[key])]
        problem = f"has an invalid {', '.join(invalid)}" if invalid else ""
    if problem:
        raise UserError(
            f"{path}: the trainer state {problem} (not written by mambakit's trainer, or edited); restore it, "
            f"or start over with another out_dir (--out)"
        )
    return state


def read_train_config(directory: Path) -> TrainConfig | None:
    """The TrainConfig saved beside a checkpoint, or None when the file is missing."""
    path = directory / TRAIN_CONFIG_NAME
    return TrainConfig.load(path) if path.is_file() else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_positive(value: Any) -> bool:
    return _is_count(value) and value > 0


#: Checks of the values resuming reads; the keys outside _STATE_KEYS are checked when present (states written before
#: them lack them).
_STATE_VALUES: dict[str, Callable[[Any], bool]] = {
    "step": _is_count,
    "epoch": _is_count,
    "examples_in_epoch": _is_count,
    "rng": lambda value: isinstance(value, list) and len(value) > 0,  # one RNG state per process
    "world_size": _is_positive,
    "epoch_start": _is_count,
    "examples_per_step": _is_positive,
    "total_steps": _is_count,
}


def _old(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())
