"""Classification for every domain: right-padding of variable-length examples into batches, the sequence
classification Task, and its metrics on numpy arrays (accuracy, Matthews correlation coefficient, AUROC binary or
macro one-vs-rest), implemented here so no app needs scikit-learn."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .task import Task


def pad_batch(examples: Sequence[dict[str, Tensor]], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad the examples' input_ids -> input_ids (b, l), attention_mask (b, l) and, when the examples have
    them, per-sequence labels (b,)."""
    length = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n], attention_mask[row, :n] = example["input_ids"], 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([example["labels"] for example in examples])
    return batch


class ClassificationTask(Task):
    """Sequence classification over padded token ids: cross-entropy; evaluation reports loss, accuracy, MCC and
    AUROC (binary, or macro one-vs-rest). A domain overrides `evaluate_logits` to change how a batch is scored
    (e.g. averaging over both DNA strands) and `collate` for inputs other than token ids."""

    primary_metric = "accuracy"
    greater_is_better = True

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Padded input_ids, attention_mask and labels."""
        return pad_batch(examples, self.pad_token_id)

    def evaluate_logits(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Class logits (b, num_labels) of a batch."""
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        return model(**inputs).logits

    def collect_logits(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Every batch's class logits (n, num_labels) in fp32 and labels (n,), on the CPU."""
        all_logits, all_labels = [], []
        for batch in batches:
            all_logits.append(self.evaluate_logits(model, batch).float().cpu())
            all_labels.append(batch["labels"].cpu())
        if not all_logits:
            raise UserError("evaluation data is empty")
        return torch.cat(all_logits), torch.cat(all_labels)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """loss (mean cross-entropy), accuracy, mcc, auroc over all batches."""
        return classification_metrics(*self.collect_logits(model, batches))


def classification_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """loss, accuracy, mcc and auroc of class logits (n, k) against labels (n,)."""
    probabilities = logits.softmax(-1).numpy()
    truth = labels.numpy()
    predictions = probabilities.argmax(-1)
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "accuracy": accuracy(truth, predictions),
        "mcc": matthews_corrcoef(truth, predictions, logits.shape[1]),
        "auroc": auroc(truth, probabilities),
    }


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    return float(np.mean(labels == predictions))


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """MCC from the confusion matrix (Gorodkin's multiclass form; the usual phi coefficient for 2 classes);
    0 when it is undefined (a constant prediction or a single class)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    n, correct = confusion.sum(), np.trace(confusion)
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    numerator = correct * n - true_counts @ predicted_counts
    denominator = np.sqrt((n**2 - predicted_counts @ predicted_counts) * (n**2 - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def _binary_auroc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney form: P(score of a positive > score of a negative), ties counting one half (average ranks)."""
    positives = int(is_positive.sum())
    negatives = len(is_positive) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average 1-based rank within each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve: probabilities (n, num_classes); for 2 classes the AUROC of class 1, else the
    mean over classes present both in and out of the labels of one-vs-rest AUROCs. NaN when undefined."""
    if probabilities.shape[1] == 2:
        return _binary_auroc(labels == 1, probabilities[:, 1])
    per_class = [_binary_auroc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    defined = [value for value in per_class if not np.isnan(value)]
    return float(np.mean(defined)) if defined else float("nan")
