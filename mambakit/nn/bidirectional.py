"""Bidirectional Mamba (BiMamba, as in Caduceus): a forward pass and a pass over the reversed sequence.

A causal mixer never lets right padding reach a real token. A pass over the reversed sequence would start in
the padding, so here the reversal happens *within each sequence's real length*: for a row of real length n,
position t < n reads position n - 1 - t and padding stays where it is. The reversed pass then also reads the
real tokens first, and a padded batch gives every real token what the sequence alone gives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UserError
from .block import ResidualBlock
from .mixer import Mamba


def padded_reverse_index(attention_mask: Tensor | None) -> Tensor | None:
    """attention_mask (b, l), 1 on real tokens (right padding) -> index (b, l) for `reverse_padded`, or None
    when there is no padding (then a plain flip is the same and cheaper).

    Raises ValueError when a row is not right-padded (real tokens, then padding only).
    """
    if attention_mask is None:
        return None
    mask = attention_mask.to(torch.bool)
    positions = torch.arange(mask.shape[1], device=mask.device)
    lengths = mask.sum(1, keepdim=True)
    if not torch.equal(mask, positions < lengths):
        raise UserError("attention_mask must be right padding: each row 1 on its real tokens, then 0 to the end")
    if bool(mask.all()):
        return None
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def reverse_padded(x: Tensor, reverse_index: Tensor | None) -> Tensor:
    """x (b, l, ...) reversed along the length: within each row's real tokens when `reverse_index` (from
    `padded_reverse_index`) is given, the whole length when it is None. Its own inverse."""
    if reverse_index is None:
        return x.flip(1)
    index = reverse_index.view(*reverse_index.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, index)


class BiMamba(nn.Module):
    """Two Mamba mixers, one over the sequence and one over its reversal, combined by "add" or "ew_multiply".

    With `weight_tie` the backward mixer shares in_proj and out_proj (weights and biases) with the forward one,
    as Caduceus' BiMambaWrapper does; its conv, x_proj, dt_proj, A_log and D stay its own.
    """

    def __init__(self, mamba_fwd: Mamba, mamba_rev: Mamba, strategy: str = "add", weight_tie: bool = True) -> None:
        super().__init__()
        if strategy not in ("add", "ew_multiply"):
            raise UserError(f"unknown bidirectional strategy {strategy!r}; choose add or ew_multiply")
        self.strategy = strategy
        self.mamba_fwd, self.mamba_rev = mamba_fwd, mamba_rev
        if weight_tie:
            for name in ("in_proj", "out_proj"):
                fwd, rev = getattr(mamba_fwd, name), getattr(mamba_rev, name)
                rev.weight = fwd.weight
                if fwd.bias is not None:
                    rev.bias = fwd.bias

    def forward(self, hidden_states: Tensor, reverse_index: Tensor | None = None) -> Tensor:
        """hidden_states (b, l, d_model) -> (b, l, d_model); `reverse_index` from `padded_reverse_index`."""
        out = self.mamba_fwd(hidden_states)
        out_rev = reverse_padded(self.mamba_rev(reverse_padded(hidden_states, reverse_index)), reverse_index)
        return out + out_rev if self.strategy == "add" else out * out_rev


class NonCausalBlock(ResidualBlock):
    """The pre-norm residual block for mixers that read the whole sequence (BiMamba, RC-equivariant ones): the
    mixer gets the padding-aware `reverse_index` instead of a recurrent state, which such mixers do not have."""

    def forward(
        self, hidden_states: Tensor, residual: Tensor | None = None, reverse_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """hidden_states, residual: (b, l, d); reverse_index from `padded_reverse_index`."""
        normed, residual = self._pre_norm(hidden_states, residual)
        return self._feed_forward(self.mixer(normed, reverse_index), residual)
