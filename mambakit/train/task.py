"""Task: what a domain app tells the trainer about its data and its objective.

An app subclasses `Task` and overrides what differs from the defaults, which fit a model that returns
`ModelOutput(logits, loss)` from `model(**batch)` on batches of `input_ids` (+ `attention_mask`, `labels`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from ..errors import UserError


class Task:
    """Collation, loss, evaluation metrics and throughput counting for one kind of training.

    `primary_metric` names the `evaluate` metric that picks the best checkpoint; `greater_is_better` says which
    direction is better (accuracy: True; loss, bits per base: False).
    """

    primary_metric: str = "loss"
    greater_is_better: bool = False

    def collate(self, examples: Sequence[Any]) -> dict[str, Tensor]:
        """Examples -> one batch: model keyword arguments plus labels, as tensors of a leading batch dimension.

        The default stacks examples that are dicts of equally shaped tensors (torch's default_collate).
        Randomness used here (or in a dataset's __getitem__) is seeded per batch, so runs and resumes repeat it.
        """
        batch = default_collate(list(examples))
        if not isinstance(batch, dict):
            raise TypeError(
                f"Task.collate: examples are {type(examples[0]).__name__}, not dicts of tensors; "
                f"override collate to build a dict of model arguments"
            )
        return batch

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The scalar training loss of one batch (on the model's device, under autocast)."""
        loss = model(**batch).loss
        if loss is None:
            raise UserError(
                f"the model returned no loss for a batch with keys {sorted(batch)}; give the batch "
                f"labels or override Task.compute_loss"
            )
        return loss

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Metrics over all `batches` (already on the device; run under torch.no_grad and autocast).

        The default is {"loss": mean of compute_loss weighted by count_tokens}. Apps add their own metrics
        (accuracy, bits per base, ...) and must keep `primary_metric` among them.
        """
        total, weight = 0.0, 0
        for batch in batches:
            tokens = self.count_tokens(batch)
            total += float(self.compute_loss(model, batch)) * tokens
            weight += tokens
        if weight == 0:
            raise UserError("evaluation data is empty: it gave no batch (or no tokens)")
        return {"loss": total / weight}

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """Tokens in a batch, for throughput: the attention_mask sum, else the size of input_ids, else batch x
        length of inputs_embeds, else the number of examples."""
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        if "input_ids" in batch:
            return batch["input_ids"].numel()
        if "inputs_embeds" in batch:
            return batch["inputs_embeds"].shape[:2].numel()
        return len(next(iter(batch.values())))

    def curriculum(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The batch as training step `step` (0-based, completed steps) sees it: a task with a curriculum (fewer
        points or dimensions early on, as in-context regression studies train) reduces it here; evaluation
        always sees whole batches. The default leaves it unchanged."""
        return batch

    def crop(self, batch: dict[str, Tensor], length: int) -> dict[str, Tensor]:
        """The batch cut to at most `length` positions, for the sequence-length warm-up.

        The default keeps the first `length` positions (dim 1) of every tensor whose dim 1 is the sequence length,
        that of input_ids (or inputs_embeds); other tensors (e.g. per-sequence labels) pass unchanged.
        """
        reference = batch.get("input_ids", batch.get("inputs_embeds"))
        if reference is None:
            raise UserError(
                "Task.crop: the batch has neither input_ids nor inputs_embeds to tell the sequence "
                "length; override crop to use seq_len_warmup"
            )
        full = reference.shape[1]
        if length >= full:
            return batch
        return {name: value[:, :length] if _is_sequence(value, full) else value for name, value in batch.items()}


def _is_sequence(value: Any, length: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == length
