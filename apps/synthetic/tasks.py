"""The trainer Task of the capability suite: cross-entropy and accuracy over the scored positions only (the copied
tokens, the induction answer, the recalled values), read from the model's logits at the same positions."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.models import IGNORE_INDEX
from mambakit.train import Task


class ScoredTokensTask(Task):
    """Batches of `input_ids` and position-aligned `targets` (IGNORE_INDEX where nothing is scored): the output
    at position t must predict targets[t]. Primary metric: accuracy over the scored positions."""

    primary_metric = "accuracy"
    greater_is_better = True

    def _logits(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(input_ids=batch["input_ids"]).logits

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = self._logits(model, batch)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX)

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Scored-position loss and accuracy, and the share of sequences with every scored position right."""
        loss, correct, scored, sequences, perfect = 0.0, 0, 0, 0, 0
        for batch in batches:
            logits = self._logits(model, batch).float()
            targets = batch["targets"]
            mask = targets != IGNORE_INDEX
            loss += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
            right = (logits.argmax(-1) == targets) & mask
            correct += int(right.sum())
            scored += int(mask.sum())
            perfect += int((right.sum(1) == mask.sum(1)).sum())
            sequences += targets.shape[0]
        scored = max(scored, 1)
        return {
            "loss": loss / scored,
            "accuracy": correct / scored,
            "sequence_accuracy": perfect / max(sequences, 1),
        }
