"""Labelled files on disk, as every domain with file inputs (images, audio) reads them: the paths a user passes,
folders listed without hidden files, a CSV/TSV table of path,label[,split] rows, class ids of labels, train/val/test
splits, and the NumPy archive of a domain's embedded data. One-line errors of the caller's type name the file and
row. No domain knowledge here."""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import MambakitError, UserError, described, first_line
from .splits import SPLIT_NAMES, stratified_split

LABEL_COLUMNS = ("label", "class")


@dataclass(frozen=True)
class TableRow:
    """One row of a path,label table: the file (absolute, or relative to the table's folder), its label and split
    when given, and `source` ("table:row (value)") for messages."""

    file: Path
    label: str | None
    split: str | None
    source: str


class Labelled(Protocol):
    """A record with a label (or None) and a source for messages."""

    label: str | None
    source: str


class Split(Protocol):
    """A record with the split its input assigns it to (or None) and a source for messages."""

    split: str | None
    source: str


class LabelledData(Protocol):
    """Labelled records and the split the data names, if any (an app's LabelledImages, LabelledAudio)."""

    records: Any
    splits: dict[str, list[int]] | None


def existing_paths(data: str | Path | Sequence[str | Path], error: type[UserError]) -> list[Path]:
    """What --data names, as paths; one that does not exist is an `error`."""
    paths = [Path(p) for p in ([data] if isinstance(data, str | Path) else data)]
    for path in paths:
        if not path.exists():
            raise error(f"{path}: no such file or folder; check the path")
    return paths


def visible(path: Path, root: Path) -> bool:
    """Whether no part of `path` below `root` is hidden (a dot file or folder)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def check_readable(path: Path, error: type[MambakitError]) -> None:
    """An `error` when this user may not read `path` (a file) or list it (a folder), so a data file the permissions
    hide is named up front rather than failing mid-run as if corrupt, or silently left out of a folder's listing."""
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise error(f"{path}: cannot list this folder (permission denied); allow it (chmod a+rx) or move it out")
    if not path.is_dir() and not os.access(path, os.R_OK):
        raise error(f"{path}: cannot read this file (permission denied); allow it (chmod a+r) or move it out")


def visible_files(
    folder: Path, wanted: Callable[[Path], bool], error: type[MambakitError]
) -> tuple[list[Path], list[Path]]:
    """(the files `wanted` takes, the other files) under `folder`, recursively, sorted, leaving out hidden files and
    folders; a wanted file this user may not read, or a folder it may not list, is an `error` naming it."""
    check_readable(folder, error)
    kept: list[Path] = []
    others: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if not visible(path, folder):
            continue
        if path.is_dir():
            check_readable(path, error)
        elif path.is_file() and wanted(path):
            check_readable(path, error)
            kept.append(path)
        elif path.is_file():
            others.append(path)
    return kept, others


def warn_skipped(where: Path, skipped: list[Path], kind: str) -> None:
    """One warning for the files under `where` that are not `kind` ("audio", "images") by their suffix, attributed
    to the caller of the reader that calls this."""
    if skipped:
        warnings.warn(
            f"{where}: skipped {len(skipped)} file(s) that are not {kind} by their suffix (e.g. {skipped[0].name})",
            stacklevel=3,
        )


def numeric_aware(names: Iterable[str]) -> list[str]:
    """The distinct names sorted, in numeric order when every one is an integer ("2" before "10")."""
    unique = sorted(set(names))
    if all(re.fullmatch(r"-?\d+", name) for name in unique):
        return sorted(unique, key=int)
    return unique


@lru_cache(maxsize=4)
def load_embedded_arrays(file: Path, error: type[UserError], what: str) -> dict[str, np.ndarray]:
    """The arrays of a domain's embedded `.npz` (read once, read-only, never unpickling); a missing or unreadable
    file is an `error` saying to reinstall. `what` names the data in messages ("image", "audio")."""
    if not file.is_file():
        raise error(
            f"{file}: the embedded {what} data is missing from this installation; reinstall mambakit or pass --data"
        )
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as cause:
        raise error(f"{file}: unreadable embedded data ({described(cause)}); reinstall mambakit") from None
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def read_label_table(
    path: Path, path_columns: Sequence[str], kind: str, error: type[UserError], require_label: bool = True
) -> list[TableRow]:
    """Rows of a CSV or TSV file whose header names a path column (the first of `path_columns` present), a
    `label` (or `class`) column (optional unless `require_label`) and optionally a `split` column (train,
    val/valid/validation/dev, test). Relative paths are relative to the table's folder; every listed file must
    exist. `kind` names the files in messages ("image", "audio"); problems raise `error`, one line each."""
    if not path.exists():
        raise error(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        raise error(f"{path}: is a folder; expected a CSV/TSV file")
    check_readable(path, error)
    rows: list[TableRow] = []
    label_rows: list[tuple[str | None, int]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header_line = handle.readline()
            tab = path.suffix.lower() == ".tsv" or ("\t" in header_line and "," not in header_line)
            delimiter = "\t" if tab else ","
            header = [field.strip().lower() for field in next(csv.reader([header_line], delimiter=delimiter), [])]
            columns = {name: i for i, name in reversed(list(enumerate(header)))}
            path_column = next((columns[name] for name in path_columns if name in columns), None)
            label_column = next((columns[name] for name in LABEL_COLUMNS if name in columns), None)
            missing = [name for name, column in (("path", path_column), ("label", label_column)) if column is None]
            if not require_label:
                missing = [name for name in missing if name != "label"]
            if missing or path_column is None:
                raise error(
                    f"{path}:1: no {' or '.join(repr(m) for m in missing)} column (header: "
                    f"{header_line.strip()[:80]!r}); a table needs a header with path,label columns "
                    f"(and optionally split)"
                )
            split_column = columns.get("split")
            for number, row in enumerate(csv.reader(handle, delimiter=delimiter), 2):
                if not any(field.strip() for field in row):
                    continue
                if len(row) != len(header):
                    raise error(f"{path}:{number}: {len(row)} field(s), but the header has {len(header)}")
                value = row[path_column].strip()
                if not value:
                    raise error(f"{path}:{number}: empty {kind} path")
                file = Path(value) if Path(value).is_absolute() else path.parent / value
                if not file.is_file():
                    raise error(
                        f"{path}:{number}: {file}: no such {kind} file (relative paths are relative to the "
                        f"table's folder {path.parent})"
                    )
                check_readable(file, error)
                label = row[label_column].strip() if label_column is not None else None
                if require_label and not label:
                    raise error(f"{path}:{number}: empty label")
                split = None
                if split_column is not None:
                    split = SPLIT_NAMES.get(row[split_column].strip().lower())
                    if split is None:
                        raise error(f"{path}:{number}: split must be train, val or test, got {row[split_column]!r}")
                rows.append(TableRow(file, label or None, split, f"{path}:{number} ({value})"))
                label_rows.append((label or None, number))
    except UnicodeDecodeError as decode_error:
        raise error(
            f"{path}: not a UTF-8 text table (undecodable byte at offset {decode_error.start}); expected CSV/TSV"
        ) from None
    except csv.Error as csv_error:
        raise error(f"{path}: malformed CSV ({first_line(csv_error)})") from None
    if not rows:
        raise error(f"{path}: no rows below the header")
    check_label_spellings(path, label_rows, error)
    return rows


def check_label_spellings(
    path: Path | str, labels: Iterable[tuple[str | None, int]], error: type[MambakitError]
) -> None:
    """An `error` naming the file, both spellings and their lines when two of `labels` ((label, line number) pairs)
    are one number written two ways ("1" and "1.0", "01", "1e0"): they would silently become two classes, and
    merging them would be a guess."""
    first: dict[float, tuple[str | None, int]] = {}
    for label, line in labels:
        try:
            value = float(label or "nan")
        except ValueError:
            continue  # not a number: compared as written
        if not math.isfinite(value):
            continue
        spelling, seen_at = first.setdefault(value, (label, line))
        if spelling != label:
            raise error(
                f"{path}: labels {spelling!r} (line {seen_at}) and {label!r} (line {line}) are one number written "
                f"two ways, which would make two classes; write the label one way"
            )


def some(names: Sequence[str], shown: int = 10) -> str:
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed if len(names) <= shown else f"{listed} (and {len(names) - shown} more)"


def encode_labels(
    records: Sequence[Labelled], classes: Sequence[str], error: type[UserError], items: str = "items"
) -> np.ndarray:
    """Class ids (int64) of the records' labels; a missing label or one outside `classes` (e.g. at predict or eval
    time, with a model trained on other classes) is an `error` naming the record's source; `items` names the
    records in that message ("images", "clips")."""
    index = {name: i for i, name in enumerate(classes)}
    ids = np.empty(len(records), dtype=np.int64)
    for row, record in enumerate(records):
        if record.label not in index:
            if record.label is None:
                raise error(f"{record.source}: no label, though other {items} have one")
            raise error(f"{record.source}: label {record.label!r} is not one of the model's classes ({some(classes)})")
        ids[row] = index[record.label]
    return ids


def record_splits(
    records: Sequence[Split], where: Path | str, error: type[UserError], items: str
) -> dict[str, list[int]] | None:
    """Record indices per split the input names ("train", "val", "test"), or None when it names none; records
    without a split among others with one, or splits without "train", are an `error` (`items` names the records:
    "images", "clips")."""
    if all(record.split is None for record in records):
        return None
    splits: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if record.split is None:
            raise error(f"{record.source}: no split, though other {items} name theirs")
        splits.setdefault(record.split, []).append(index)
    if "train" not in splits:
        raise error(f"{where}: the data names splits {sorted(splits)} but no train split")
    return splits


def split_indices(
    labels: Sequence[str],
    own_splits: dict[str, list[int]] | None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Record indices of "train", "val" and "test" (each sorted; a split may be empty). The data's own split
    (`own_splits`) is kept, a missing val split carved from its train split (stratified, seeded), a missing test
    split left empty (test data is never taken from the user's train split); with none, a seeded stratified split
    by class (`mambakit.splits.stratified_split`)."""
    if own_splits is None:
        return stratified_split(list(labels), val_fraction, test_fraction, seed)
    splits = {name: sorted(own_splits.get(name, [])) for name in ("train", "val", "test")}
    if not splits["val"] and val_fraction > 0:
        train = np.asarray(splits["train"])
        carved = stratified_split([labels[i] for i in train], val_fraction, 0.0, seed)
        splits["train"] = sorted(train[carved["train"]].tolist())
        splits["val"] = sorted(train[carved["val"]].tolist())
    return splits


def split_labelled(
    data: LabelledData, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[int]]:
    """`split_indices` of labelled data: its records' labels and its own split, if any."""
    labels = [str(record.label) for record in data.records]
    return split_indices(labels, data.splits, val_fraction, test_fraction, seed)
