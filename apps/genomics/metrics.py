"""Classification metrics on numpy arrays: accuracy, Matthews correlation coefficient and AUROC (binary, or
macro one-vs-rest over classes), implemented here so the app needs no scikit-learn."""

from __future__ import annotations

import numpy as np


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
