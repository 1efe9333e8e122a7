"""Next-token language modelling as a trainer Task, shared by every domain that trains a causal LM (text bytes,
DNA bases, audio samples): the loss in nats per token and the same in bits per unit."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor, nn

from ..models import IGNORE_INDEX
from .task import Task


class CausalLMTask(Task):
    """Batches of `input_ids` with `labels` (the same ids; the model shifts them by one). `unit` names what a
    token is ("byte", "base", "sample"): evaluate reports `bits_per_<unit>`, the primary metric."""

    greater_is_better = False

    def __init__(self, unit: str = "token") -> None:
        self.unit = unit
        self.primary_metric = f"bits_per_{unit}"

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """Predicted positions: every label after the first of each row that is not IGNORE_INDEX."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Token-weighted mean loss (nats), perplexity and bits per unit over all batches."""
        loss = super().evaluate(model, batches)["loss"]
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), self.primary_metric: loss / math.log(2)}
