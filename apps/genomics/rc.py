"""Reverse-complement (RC) equivariance by parameter sharing (RCPS, as in Caduceus-PS), for any vocabulary with
a complement permutation (DNA: A<->T, C<->G; special tokens map to themselves).

Hidden states carry 2 * d channels: the first half reads the sequence, the second half is the same network's
reading of the reverse complement, stored reversed along both the length and the channels. The RC of a hidden
state is then one flip of length and channels (`rc_hidden`), which swaps the halves, and every module here
commutes with it: model(RC(x)) == RC(model(x)). Reversals happen within each row's real length, so right
padding changes nothing for the real tokens (see `mambakit.nn.bidirectional`). `RCPSMambaModel` in
`mambakit.apps.genomics.models` builds a backbone of these modules.

Shapes: b batch, l length, d the per-strand width (the config's d_model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.nn import BiMamba, padded_reverse_index, pool_sequence, reverse_padded


def complement_table(complement_map: Sequence[int], size: int, device: torch.device | None = None) -> Tensor:
    """The complement of every id in [0, size) as a long tensor: ids beyond the map (vocabulary padding rows)
    are their own complement."""
    if len(complement_map) > size:
        raise UserError(f"complement_map has {len(complement_map)} ids but the vocabulary only {size}")
    table = torch.arange(size, device=device)
    table[: len(complement_map)] = torch.as_tensor(list(complement_map), dtype=torch.long, device=device)
    return table


def reverse_complement_ids(input_ids: Tensor, complement: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """input_ids (b, l) -> their reverse complements, reversed within each row's real length (padding stays at
    the end). `complement` is a table from `complement_table`."""
    return reverse_padded(complement[input_ids], padded_reverse_index(attention_mask))


def rc_hidden(hidden: Tensor, reverse_index: Tensor | None = None) -> Tensor:
    """The RC of (b, l, c) hidden states: reverse the length (within the real tokens) and the channels."""
    return reverse_padded(hidden.flip(-1), reverse_index)


class RCPSEmbedding(nn.Embedding):
    """Token embedding whose output (b, l, 2d) is [E(x), flip_channels(E(complement(x)))]: the second half is the
    reverse-complement strand's embedding put back in forward order. The weight is (num_embeddings, d)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        complement_map: Sequence[int],
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        # Derived from the config, so not saved with the weights.
        self.register_buffer("complement", complement_table(complement_map, num_embeddings, device), persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (b, l) -> (b, l, 2d)."""
        return torch.cat([super().forward(input_ids), super().forward(self.complement[input_ids]).flip(-1)], -1)


class RCPSNorm(nn.Module):
    """A per-position norm applied with shared weights to each strand's half of (b, l, 2d) hidden states."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.submodule = norm

    @property
    def weight(self) -> Tensor:
        """The shared norm's weight (blocks read its dtype)."""
        return self.submodule.weight

    def forward(self, hidden: Tensor) -> Tensor:
        """(b, l, 2d) -> (b, l, 2d)."""
        fwd, rc = hidden.chunk(2, dim=-1)
        return torch.cat([self.submodule(fwd), self.submodule(rc.flip(-1)).flip(-1)], dim=-1)


class RCPSMixer(nn.Module):
    """A mixer (Mamba or BiMamba) run with shared weights on the forward half and on the reverse complement of
    the RC half of (b, l, 2d) hidden states."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.submodule = mixer

    def _mix(self, hidden: Tensor, reverse_index: Tensor | None) -> Tensor:
        if isinstance(self.submodule, BiMamba):
            return self.submodule(hidden, reverse_index)
        return self.submodule(hidden)

    def forward(self, hidden: Tensor, reverse_index: Tensor | None = None) -> Tensor:
        """(b, l, 2d) -> (b, l, 2d); `reverse_index` from `padded_reverse_index`."""
        fwd, rc = hidden.chunk(2, dim=-1)
        rc_out = rc_hidden(self._mix(rc_hidden(rc, reverse_index), reverse_index), reverse_index)
        return torch.cat([self._mix(fwd, reverse_index), rc_out], dim=-1)


def rc_logits(head: nn.Linear, features: Tensor, complement: Tensor) -> Tensor:
    """RC-equivariant vocabulary logits from (b, l, 2d) features with a (vocab, d) linear head: the RC half's
    logits, complemented, are averaged with the forward half's. (b, l, vocab)."""
    fwd, rc = features.chunk(2, dim=-1)
    return (head(fwd) + head(rc.flip(-1))[..., complement]) / 2


def rc_fold(features: Tensor) -> Tensor:
    """(b, l, 2d) -> (b, l, d): the average of the two strands' readings of each position, invariant per
    position under RC (up to the reversal of positions)."""
    fwd, rc = features.chunk(2, dim=-1)
    return (fwd + rc.flip(-1)) / 2


def rc_pool(features: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """RC-invariant pooling of (b, l, 2d) features -> (b, d): each strand is pooled in its own reading order (so
    "last" and "cls" mean the same on both strands) and the two are averaged."""
    fwd, rc = features.chunk(2, dim=-1)
    rc_strand = reverse_padded(rc.flip(-1), padded_reverse_index(attention_mask))
    return (pool_sequence(fwd, attention_mask, pooling) + pool_sequence(rc_strand, attention_mask, pooling)) / 2


def rc_conjoin(
    forward: Callable[[Tensor, Tensor | None], Tensor],
    input_ids: Tensor,
    complement: Tensor,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Post-hoc RC conjoining at inference: the average of `forward(input_ids, attention_mask)` and of the same
    on the reverse complements. For per-sequence outputs (b, ...) such as classification logits."""
    reverse = reverse_complement_ids(input_ids, complement, attention_mask)
    return (forward(input_ids, attention_mask) + forward(reverse, attention_mask)) / 2
