"""The genomics tasks for mambakit's trainer: sequence classification, causal next-base pretraining, and masked
(BERT-style) pretraining for bidirectional and RC-equivariant models.

Each pads the items of `mambakit.apps.genomics.datasets` on the right (with [PAD]) into batches the matching
model takes: `MambaForSequenceClassification`, `MambaLMHeadModel`, `MambaForMaskedLM`. Classification and
language modelling are the core's (`mambakit.train.classification`, `mambakit.train.lm_task`); this module adds
what is DNA's own: reverse-complement conjoining and masked pretraining over bases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.models import IGNORE_INDEX
from mambakit.train import Task
from mambakit.train.classification import ClassificationTask, pad_batch
from mambakit.train.lm_task import CausalLMTask

from .rc import complement_table, rc_conjoin
from .tokenizer import DNATokenizer


class ClassifyTask(ClassificationTask):
    """Sequence classification of DNA (loss, accuracy, MCC, AUROC). With `conjoin`, evaluation averages the logits
    of each sequence and of its reverse complement (post-hoc RC conjoining)."""

    def __init__(self, tokenizer: DNATokenizer | None = None, conjoin: bool = False) -> None:
        self.tokenizer = tokenizer or DNATokenizer()
        super().__init__(self.tokenizer.pad_token_id)
        self.conjoin = conjoin

    def evaluate_logits(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Class logits (b, num_labels) of a batch, conjoined over both strands when the task says so."""
        return conjoined(
            lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits,
            batch,
            self.tokenizer if self.conjoin else None,
        )


def conjoined(
    forward: Callable[[Tensor, Tensor], Tensor], batch: dict[str, Tensor], tokenizer: DNATokenizer | None
) -> Tensor:
    """forward(input_ids, attention_mask) of a padded batch; with a tokenizer, averaged with the same on the
    reverse complements (RC conjoining). For per-sequence outputs (logits, pooled embeddings)."""
    if tokenizer is None:
        return forward(batch["input_ids"], batch["attention_mask"])
    complement = complement_table(tokenizer.complement_map, tokenizer.vocab_size, batch["input_ids"].device)
    return rc_conjoin(forward, batch["input_ids"], complement, batch["attention_mask"])


class PretrainTask(CausalLMTask):
    """Causal next-base language modelling; evaluation reports loss (nats), perplexity and bits_per_base. Labels
    are the input ids with padding ignored; the model shifts them (position t predicts base t + 1)."""

    def __init__(self, tokenizer: DNATokenizer | None = None) -> None:
        super().__init__(unit="base")
        self.tokenizer = tokenizer or DNATokenizer()

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """input_ids and labels (b, l); a causal model needs no attention_mask under right padding."""
        batch = pad_batch(examples, self.tokenizer.pad_token_id)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return {"input_ids": batch["input_ids"], "labels": labels}


class MlmTask(Task):
    """Masked language modelling (BERT's recipe): `mask_probability` of the real bases become targets; of those
    80 % are replaced by [MASK], 10 % by a random base and 10 % kept. Labels are the original ids at targets
    and IGNORE_INDEX elsewhere. Evaluation reports loss, accuracy and bits_per_base over the targets."""

    primary_metric = "bits_per_base"
    greater_is_better = False

    def __init__(self, tokenizer: DNATokenizer | None = None, mask_probability: float = 0.15) -> None:
        if not 0 < mask_probability < 1:
            raise UserError(f"mask_probability must be in (0, 1), got {mask_probability}")
        self.tokenizer = tokenizer or DNATokenizer()
        self.mask_probability = mask_probability

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Padded and masked input_ids, attention_mask and labels (the trainer seeds the draws per batch)."""
        batch = pad_batch(examples, self.tokenizer.pad_token_id)
        input_ids, real = batch["input_ids"], batch["attention_mask"].bool()
        targets = (torch.rand(input_ids.shape) < self.mask_probability) & real
        if not targets.any():  # a batch with no target would give a NaN loss
            rows, columns = real.nonzero(as_tuple=True)
            pick = int(torch.randint(len(rows), ()))
            targets[rows[pick], columns[pick]] = True
        labels = input_ids.masked_fill(~targets, IGNORE_INDEX)
        action = torch.rand(input_ids.shape)
        masked = input_ids.masked_fill(targets & (action < 0.8), self.tokenizer.mask_token_id)
        bases = torch.tensor(self.tokenizer.base_token_ids)
        random_bases = bases[torch.randint(len(bases), input_ids.shape)]
        swap = targets & (action >= 0.8) & (action < 0.9)
        masked = torch.where(swap, random_bases, masked)
        return {"input_ids": masked, "attention_mask": batch["attention_mask"], "labels": labels}

    def crop(self, batch: dict[str, Tensor], length: int) -> dict[str, Tensor]:
        """The default crop, keeping at least one target: if the cut removed every one, each row's first base
        becomes a kept-as-is target."""
        cropped = super().crop(batch, length)
        if (cropped["labels"] == IGNORE_INDEX).all():
            labels = cropped["labels"].clone()
            labels[:, 0] = cropped["input_ids"][:, 0]
            cropped = {**cropped, "labels": labels}
        return cropped

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """loss (mean nats per target), accuracy on targets, bits_per_base."""
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            logits = model(**batch).logits.float()
            targets = batch["labels"] != IGNORE_INDEX
            total += float(F.cross_entropy(logits[targets], batch["labels"][targets], reduction="sum"))
            correct += int((logits[targets].argmax(-1) == batch["labels"][targets]).sum())
            count += int(targets.sum())
        if count == 0:
            raise UserError("evaluation data is empty")
        loss = total / count
        return {"loss": loss, "accuracy": correct / count, "bits_per_base": loss / math.log(2)}
