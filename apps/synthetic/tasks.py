"""The trainer Task of the capability suite: cross-entropy and accuracy over the scored positions only (the copied
tokens, the induction answer, the recalled values), read from the model's logits at the same positions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.models import IGNORE_INDEX
from mambakit.models.generation import allocate_state_for
from mambakit.train import Task

#: Positions per forward when evaluating a long sequence: a recurrent model carries its state from one chunk to the
#: next, so memory stays bounded whatever the length.
EVAL_CHUNK = 8192


def _chunk_logits(model: nn.Module, input_ids: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(start, logits of input_ids[:, start:start + EVAL_CHUNK]) over the sequence, the state carried between
    chunks (attention layers get a KV cache of the whole length)."""
    length = input_ids.shape[1]
    if length <= EVAL_CHUNK or not hasattr(model, "allocate_state"):
        yield 0, model(input_ids=input_ids).logits
        return
    state = allocate_state_for(model, input_ids.shape[0], input_ids.device, length)
    for start in range(0, length, EVAL_CHUNK):
        yield start, model(input_ids=input_ids[:, start : start + EVAL_CHUNK], state=state).logits


class ScoredTokensTask(Task):
    """Batches of `input_ids` and position-aligned `targets` (IGNORE_INDEX where nothing is scored): the output
    at position t must predict targets[t]. Primary metric: accuracy over the scored positions."""

    primary_metric = "accuracy"
    greater_is_better = True

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(input_ids=batch["input_ids"]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX)

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Scored-position loss and accuracy, and the share of sequences with every scored position right; long
        sequences are read in chunks of EVAL_CHUNK positions."""
        loss, correct, scored, sequences, perfect = 0.0, 0, 0, 0, 0
        for batch in batches:
            targets = batch["targets"]
            wrong = torch.zeros(targets.shape[0], dtype=torch.long, device=targets.device)
            for start, logits in _chunk_logits(model, batch["input_ids"]):
                chunk = targets[:, start : start + logits.shape[1]]
                mask = chunk != IGNORE_INDEX
                logits = logits.float()
                loss += F.cross_entropy(logits[mask], chunk[mask], reduction="sum").item()
                right = (logits.argmax(-1) == chunk) & mask
                correct += int(right.sum())
                scored += int(mask.sum())
                wrong += (mask & ~right).sum(1)
            perfect += int((wrong == 0).sum())
            sequences += targets.shape[0]
        scored = max(scored, 1)
        return {"loss": loss / scored, "accuracy": correct / scored, "sequence_accuracy": perfect / max(sequences, 1)}
