"""Sequence pooling that ignores padding: a padded batch pools to what each sequence gives alone."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserError

POOLINGS = ("mean", "last", "cls", "max")


def pool_sequence(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """hidden (b, l, d), attention_mask (b, l) with 1 on real tokens (right padding) -> (b, d).

    mean: average of real positions; last: the last real position (what a causal model has read the whole
    sequence at); cls: position 0 (a CLS token); max: elementwise maximum over real positions.
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = attention_mask.to(torch.bool)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        lengths = mask.sum(1).clamp(min=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if pooling == "max":
        return hidden.masked_fill(~mask[..., None], torch.finfo(hidden.dtype).min).amax(1)
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
