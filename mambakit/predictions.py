"""Writing and reading the predictions CSV that every app's `predict` command produces.

One row per item: ``name,prediction`` and, when class probabilities are given, one ``p_<class>`` column per
class with 6 decimals. The file goes through Python's `csv` module, so a name holding a comma, a double quote or
a newline is quoted as RFC 4180 says and never shifts the columns. Rows end in ``\\n``. The file is written to a
temporary file beside the target and moved into place with `os.replace`, so a failure half way leaves any old
file untouched rather than a half-written one. Domain-neutral: no torch, no app knowledge.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np

__all__ = ["Predictions", "check_output_file", "read_predictions_csv", "write_predictions_csv", "write_top_k_csv"]

#: Digits after the decimal point of each probability.
PROBABILITY_DECIMALS = 6
_FIXED_COLUMNS = ("name", "prediction")
_PROBABILITY_PREFIX = "p_"


@dataclass(frozen=True)
class Predictions:
    """A predictions CSV read back: the item names and predicted labels (as the strings written), the classes
    of the ``p_<class>`` columns, and the probabilities, shape (items, classes), or None when the file has no
    probability columns."""

    names: list[str]
    predictions: list[str]
    class_names: list[str]
    probabilities: np.ndarray | None


def check_output_file(path: Path, what: str = "predictions", example_name: str = "predictions.csv") -> None:
    """A one-line UserError, before any work is done, when the --out `path` is an existing folder: `what` (the
    predictions, the embeddings) is written to one file, e.g. `example_name` inside that folder."""
    from .errors import UserError  # here: importing the package at the top would import torch

    if path.is_dir():
        raise UserError(
            f"--out {path}: is a folder; the {what} are written to one file: give a file path such as "
            f"{path / example_name}"
        )


def write_predictions_csv(
    path: str | os.PathLike[str],
    names: Sequence[str],
    predictions: Sequence[str] | Sequence[int] | np.ndarray | None,
    probabilities: Sequence[Sequence[float]] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write one row per item to `path` (a CSV file) and return the path.

    - `names`: one string per item (FASTA record name, image or audio file name, ...), written as given.
    - `predictions`: one per item, either the predicted label (a string, written as is) or a class index (an
      integer, written as ``class_names[index]`` when `class_names` is given, else as the number). None means
      the argmax of each row of `probabilities`.
    - `probabilities`: optional (items, classes) array; adds one ``p_<class>`` column per class, each value
      with 6 decimals.
    - `class_names`: names of the classes, in the order of the probability columns; without them the columns
      are ``p_0, p_1, ...``.

    The parent folder is created. Lengths and shapes are checked first (a one-line ValueError), so a bad call
    writes nothing.
    """
    path = Path(path)
    n = len(names)
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"names[{index}] is a {type(name).__name__}, not a str")
    classes = None if class_names is None else [str(c) for c in class_names]
    if classes is not None and len(set(classes)) != len(classes):
        raise ValueError(f"class_names hold duplicates ({classes}); each class needs its own column")

    table = None
    if probabilities is not None:
        table = np.asarray(probabilities, dtype=np.float64)
        if table.ndim != 2:
            raise ValueError(f"probabilities must be 2-D (items, classes), got shape {table.shape}")
        if table.shape[0] != n:
            raise ValueError(f"probabilities has {table.shape[0]} row(s) but there are {n} name(s)")
        if classes is not None and table.shape[1] != len(classes):
            raise ValueError(f"probabilities has {table.shape[1]} column(s) but there are {len(classes)} class name(s)")
        if table.shape[1] == 0:
            raise ValueError("probabilities has no columns; pass None to write no probability columns")

    if predictions is None:
        if table is None:
            raise ValueError("predictions is None and no probabilities were given to take the argmax of")
        predictions = table.argmax(axis=1) if n else []
    if len(predictions) != n:
        raise ValueError(f"{len(predictions)} prediction(s) but {n} name(s); give one prediction per name")
    labels = [_label(prediction, index, classes) for index, prediction in enumerate(predictions)]

    header = list(_FIXED_COLUMNS)
    if table is not None:
        columns = classes if classes is not None else [str(i) for i in range(table.shape[1])]
        header += [f"{_PROBABILITY_PREFIX}{c}" for c in columns]

    def rows():
        yield header
        for index in range(n):
            row = [names[index], labels[index]]
            if table is not None:
                row += [f"{p:.{PROBABILITY_DECIMALS}f}" for p in table[index]]
            yield row

    _write_atomically(path, rows())
    return path


def read_predictions_csv(path: str | os.PathLike[str]) -> Predictions:
    """The rows of a file `write_predictions_csv` wrote (or any CSV with a ``name,prediction[,p_<class>...]``
    header). Predictions come back as strings; probabilities as float64. A malformed file raises a one-line
    ValueError naming it (and the line)."""
    path = Path(path)
    names: list[str] = []
    predictions: list[str] = []
    values: list[list[float]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header name,prediction[,p_<class>...]")
        extra = header[len(_FIXED_COLUMNS) :]
        if tuple(header[: len(_FIXED_COLUMNS)]) != _FIXED_COLUMNS or not all(
            column.startswith(_PROBABILITY_PREFIX) for column in extra
        ):
            raise ValueError(f"{path}:1: header {header[:4]!r} is not name,prediction[,p_<class>...]")
        class_names = [column[len(_PROBABILITY_PREFIX) :] for column in extra]
        for row in reader:
            if len(row) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(row)} field(s), but the header has {len(header)}")
            names.append(row[0])
            predictions.append(row[1])
            try:
                values.append([float(field) for field in row[2:]])
            except ValueError:
                raise ValueError(f"{path}:{reader.line_num}: a probability is not a number ({row[2:]!r})") from None
    probabilities = np.asarray(values, dtype=np.float64).reshape(len(names), len(class_names)) if class_names else None
    return Predictions(names, predictions, class_names, probabilities)


def _label(prediction: object, index: int, classes: list[str] | None) -> str:
    """A prediction as written: a string as is, a class index through `classes` (when given)."""
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, Integral) and not isinstance(prediction, bool):
        number = int(prediction)
        if classes is None:
            return str(number)
        if not 0 <= number < len(classes):
            raise ValueError(f"predictions[{index}] is class index {number}, outside the {len(classes)} class name(s)")
        return classes[number]
    raise TypeError(f"predictions[{index}] is a {type(prediction).__name__}; give a label (str) or a class index (int)")


def write_top_k_csv(
    path: str | os.PathLike[str], names: Sequence[str], probabilities: np.ndarray, class_names: Sequence[str], k: int
) -> Path:
    """One row per item with its `k` most likely classes: ``name,prediction`` then ``top1,p_top1,...,topk,p_topk``
    (labels, and probabilities with 6 decimals), for many classes (ImageNet's 1,000) where one column per class
    would not be read; written like `write_predictions_csv`."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(names) != len(probabilities) or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"need probabilities of shape (names, classes) = ({len(names)}, {len(class_names)}), "
            f"got {probabilities.shape}"
        )
    if not 1 <= k <= len(class_names):
        raise ValueError(f"k must be in [1, {len(class_names)}], got {k}")
    header = [*_FIXED_COLUMNS]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"{_PROBABILITY_PREFIX}top{rank}"]
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = [header]
    for name, ranked, row in zip(names, order, probabilities, strict=True):
        cells = [name, class_names[ranked[0]]]
        for index in ranked:
            cells += [class_names[index], f"{row[index]:.{PROBABILITY_DECIMALS}f}"]
        rows.append(cells)
    target = Path(path)
    _write_atomically(target, rows)
    return target


def _write_atomically(path: Path, rows) -> None:
    """Write CSV rows to a new file beside `path`, then move it over `path`; on any failure the temporary file
    is removed and an existing `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as open(path, "w") would for a new file.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
