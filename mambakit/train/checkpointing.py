"""Training checkpoints: a model checkpoint directory plus the trainer's state, replaced atomically.

    out_dir/last/  and  out_dir/best/
        config.json, model.safetensors, extra files   what mambakit.models.save_pretrained writes
        trainer_state.pt                              optimizer, scheduler, step, epoch, data position, best metric,
                                                      RNG states of every process (torch.load, weights_only)
        train_config.json                             the TrainConfig of the run

A directory is written whole into a temporary sibling (`.last.tmp-<random>`), its files fsynced, then swapped in
by two renames: the old one to `.last.old`, the new one to `last`. At every moment `last` or, between the two
renames, `.last.old` holds a complete checkpoint; `recover` puts `.last.old` back after a crash there.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
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


def write_checkpoint(
    directory: Path,
    model: TrainableModel,
    extra_files: Mapping[str, bytes | str] | None,
    trainer_state: dict[str, Any],
    config: TrainConfig,
) -> None:
    """Atomically replace `directory` with a checkpoint of `model`, `trainer_state` and `config`."""
    # Clear what a crash in an earlier write left, never the only complete copy.
    recover(directory)
    old = _old(directory)
    shutil.rmtree(old, ignore_errors=True)
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(stale)
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


def recover(directory: Path) -> None:
    """Finish a swap that a crash interrupted: bring back `.name.old` when `name` is missing."""
    old = _old(directory)
    if not directory.exists() and old.is_dir():
        old.rename(directory)


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state saved in checkpoint `directory` (read without executing pickled code)."""
    path = directory / TRAINER_STATE_NAME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; {directory} is not a training checkpoint") from None
    except Exception as error:  # the unpickler fails on bad bytes with many exception types
        raise UserError(
            f"{path}: unreadable trainer state ({type(error).__name__}); the file may be truncated "
            f"or corrupt: restore it or start a new run"
        ) from None


def read_train_config(directory: Path) -> TrainConfig | None:
    """The TrainConfig saved beside a checkpoint, or None when the file is missing."""
    path = directory / TRAIN_CONFIG_NAME
    return TrainConfig.load(path) if path.is_file() else None


def _old(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())
