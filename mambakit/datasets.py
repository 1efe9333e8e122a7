"""Dataset pieces shared by the apps."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class TokenWindows(Dataset):
    """Consecutive, non-overlapping windows of `length` tokens over one long token stream, for causal language
    modelling (the model shifts labels by one inside). The last partial window is dropped."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, length: int) -> None:
        if length < 2:
            raise ValueError(f"window length must be >= 2, got {length}")
        self.tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        self.length = length

    def __len__(self) -> int:
        return len(self.tokens) // self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        window = self.tokens[index * self.length : (index + 1) * self.length]
        return {"input_ids": window, "labels": window}
