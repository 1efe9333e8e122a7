"""Next-token language modelling as a trainer Task, shared by every domain that trains a causal LM (text bytes,
DNA bases, audio samples): the loss in nats per token and the same in bits per unit."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

from torch import Tensor, nn

from ..models import IGNORE_INDEX
from .task import Task


class CausalLMTask(Task):
    """Batches of `input_ids` with `labels` (the same ids; the model shifts them by one). `unit` names what a
    token is ("byte", "base", "sample"): evaluate reports `bits_per_<unit>`, the primary metric.

    With `bytes_of` (ids -> the UTF-8 bytes of their text), evaluate also reports `bits_per_byte`: the total
    loss over the bytes of the predicted tokens, which compares language models of different tokenizers."""

    greater_is_better = False

    def __init__(self, unit: str = "token", bytes_of: Callable[[list[int]], int] | None = None) -> None:
        self.unit, self.bytes_of = unit, bytes_of
        self.primary_metric = f"bits_per_{unit}"

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """Predicted positions: every label after the first of each row that is not IGNORE_INDEX."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Token-weighted mean loss (nats), perplexity and bits per unit over all batches (and bits per byte)."""
        tokens = text_bytes = 0

        def counted() -> Iterator[dict[str, Tensor]]:
            nonlocal tokens, text_bytes
            for batch in batches:
                if self.bytes_of is not None:
                    tokens += self.count_tokens(batch)
                    for row in batch["labels"][:, 1:].tolist():
                        text_bytes += self.bytes_of([i for i in row if i != IGNORE_INDEX])
                yield batch

        loss = super().evaluate(model, counted())["loss"]
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), self.primary_metric: loss / math.log(2)}
        if self.bytes_of is not None and text_bytes:
            metrics["bits_per_byte"] = loss * tokens / math.log(2) / text_bytes
        return metrics
