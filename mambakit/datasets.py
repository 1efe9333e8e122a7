"""Dataset pieces shared by the apps."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UserError


class TokenWindows(Dataset):
    """Consecutive, non-overlapping windows of `length` tokens over one long token stream (its tokens `start` to
    `stop`), for causal language modelling (the model shifts labels by one inside). The last partial window is
    dropped.

    The stream stays as given (a memmap stays on disk); only a window read becomes an int64 tensor. Pickled (as
    DataLoader workers that spawn receive it), a memmap travels as its file's name and place, not its data."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, length: int, start: int = 0, stop: int | None = None) -> None:
        if length < 2:
            raise UserError(f"window length must be >= 2, got {length}")
        array = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        self.tokens = array[start:stop]  # a view: a memmap's part stays a memmap
        self.length = length

    def __len__(self) -> int:
        return len(self.tokens) // self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        window = torch.from_numpy(self.tokens[index * self.length : (index + 1) * self.length].astype(np.int64))
        return {"input_ids": window, "labels": window}

    def __getstate__(self) -> dict[str, Any]:
        tokens = self.tokens
        if not isinstance(tokens, np.memmap) or tokens.size == 0:
            return dict(self.__dict__)
        return {
            "length": self.length,
            "filename": tokens.filename,
            "dtype": tokens.dtype.str,
            "offset": _file_offset(tokens),
            "count": len(tokens),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "filename" not in state:
            self.__dict__.update(state)
            return
        self.length = state["length"]
        self.tokens = np.memmap(
            state["filename"], dtype=state["dtype"], mode="r", offset=state["offset"], shape=(state["count"],)
        )


def _file_offset(tokens: np.memmap) -> int:
    """Where a memmap's first element lies in its file. A slice keeps its parent's `offset` attribute, so the
    place is measured from the array that maps the file (the one whose base is the mmap itself)."""
    if tokens.ndim != 1 or not tokens.flags.c_contiguous:
        raise UserError("TokenWindows pickles a memmap of consecutive tokens only")
    mapping: Any = tokens
    while not isinstance(mapping.base, mmap.mmap):
        mapping = mapping.base
    return int(mapping.offset) + tokens.ctypes.data - mapping.ctypes.data
