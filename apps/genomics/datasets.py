"""Map-style torch datasets of tokenized DNA: labelled (or unlabelled) sequences for classification and
prediction, and fixed-length windows over genome regions for causal and masked LM pretraining.

Items are dicts holding one sequence's ids (int64 tensor, unpadded) and, when labelled, its class id; the tasks
(`mambakit.apps.genomics.tasks`) pad and mask them into batches. Reverse-complement augmentation draws from
torch's global RNG, which the trainer seeds per batch, so runs and resumes repeat it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mambakit.errors import UserError

from .readers import Region, SequenceRecord, encode_labels
from .tokenizer import DNATokenizer


def _maybe_reverse_complement(ids: np.ndarray, tokenizer: DNATokenizer, enabled: bool) -> np.ndarray:
    if enabled and bool(torch.rand(()) < 0.5):
        return tokenizer.reverse_complement_ids(ids)
    return ids


class SequenceDataset(Dataset):
    """Tokenized sequences, with class ids when `classes` is given (labels outside it are an error naming the
    record's file and line). Sequences longer than `max_length` keep their first `max_length` bases."""

    def __init__(
        self,
        records: Sequence[SequenceRecord],
        tokenizer: DNATokenizer,
        classes: Sequence[str] | None = None,
        max_length: int | None = None,
        rc_augment: bool = False,
    ) -> None:
        self.tokenizer, self.rc_augment = tokenizer, rc_augment
        self.names = [record.name for record in records]
        self.ids = [tokenizer.encode(record.sequence[:max_length]) for record in records]
        self.labels = None if classes is None else encode_labels(records, classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = _maybe_reverse_complement(self.ids[index], self.tokenizer, self.rc_augment)
        item = {"input_ids": torch.from_numpy(ids.astype(np.int64))}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item


def encode_genome(records: Sequence[SequenceRecord], tokenizer: DNATokenizer) -> dict[str, np.ndarray]:
    """Contig name -> its ids (uint8: one byte per base, so a genome costs its length in memory)."""
    return {record.name: tokenizer.encode(record.sequence) for record in records}


class GenomeWindows(Dataset):
    """Windows of `window` bases over genome `regions`, every `stride` bases (default: `window`, no overlap);
    the last window of a region may be shorter (at least 2 bases, so it predicts one). Each window is taken
    inside one region, so held-out regions never leak into training windows. With `max_windows`, at most that
    many are kept, evenly spread over all of them (always the same ones), so evaluating a large genome's held-out
    part stays quick."""

    def __init__(
        self,
        contigs: Mapping[str, np.ndarray],
        regions: Sequence[Region],
        window: int,
        stride: int | None = None,
        tokenizer: DNATokenizer | None = None,
        rc_augment: bool = False,
        max_windows: int | None = None,
    ) -> None:
        if window < 2:
            raise UserError(f"window must be >= 2 bases, got {window}")
        stride = window if stride is None else stride
        if stride < 1:
            raise UserError(f"stride must be >= 1, got {stride}")
        if rc_augment and tokenizer is None:
            raise UserError("rc_augment needs the tokenizer (for the complement map)")
        self.contigs, self.window, self.tokenizer, self.rc_augment = contigs, window, tokenizer, rc_augment
        starts = []
        for region in regions:
            if region.contig not in contigs:
                raise UserError(f"region {region.contig}:{region.start}-{region.end}: no such contig")
            last = min(region.end, len(contigs[region.contig]))
            starts += [
                (region.contig, start, min(start + window, last)) for start in range(region.start, last - 1, stride)
            ]
        if max_windows is not None:
            if max_windows < 1:
                raise UserError(f"max_windows must be >= 1, got {max_windows}")
            if len(starts) > max_windows:
                kept = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
                starts = [starts[index] for index in kept]
        self.spans = starts

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        contig, start, end = self.spans[index]
        ids = self.contigs[contig][start:end]
        if self.tokenizer is not None:
            ids = _maybe_reverse_complement(ids, self.tokenizer, self.rc_augment)
        return {"input_ids": torch.from_numpy(ids.astype(np.int64))}

    @property
    def num_bases(self) -> int:
        """Bases covered by the windows (each counted once per window holding it)."""
        return sum(end - start for _, start, end in self.spans)
