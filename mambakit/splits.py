"""Reproducible train/val/test splits of labelled examples, shared by the apps (no domain knowledge here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UserError

#: Names of user-given split folders (and `split` column values), each mapped to its canonical split.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """A one-line ValueError unless both fractions are in [0, 1) and leave some training data."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"val and test fractions must be in [0, 1) and leave some training data, got "
            f"{val_fraction} and {test_fraction}"
        )


def stratified_split(
    labels: Sequence[str] | np.ndarray, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[int]]:
    """Seeded split of example indices (0 .. len(labels) - 1) into "train"/"val"/"test", each class in the same
    proportions: per class (in sorted order) a seeded permutation of its members gives round(n * test_fraction)
    to test, round(n * val_fraction) to val and the rest to train. Each split's indices come back sorted; the
    same labels, fractions and seed always give the same split."""
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in sorted(set(labels.tolist())):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test, n_val = round(len(members) * test_fraction), round(len(members) * val_fraction)
        splits["test"] += members[:n_test].tolist()
        splits["val"] += members[n_test : n_test + n_val].tolist()
        splits["train"] += members[n_test + n_val :].tolist()
    return {name: sorted(indices) for name, indices in splits.items()}
