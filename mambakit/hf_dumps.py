"""Hugging Face `datasets` dumps read without `datasets`: one `.parquet` file or a folder of them (`to_parquet`, the
hub layout) or a `save_to_disk` folder of `.arrow` streams, holding a media column (an `Image` or `Audio`
feature: a struct of bytes and path, raw bytes, or paths) and a label column (a `ClassLabel` feature or plain
integers or strings). Every domain with file inputs reads them the same way; one-line errors of the caller's
type name the file and row. Needs pyarrow."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError, described
from .labelled_files import visible
from .splits import SPLIT_NAMES

#: Files of a `datasets` dump: `to_parquet` / hub layout, or `save_to_disk` (Arrow streams).
HF_SUFFIXES = (".parquet", ".arrow")
#: Column names tried for the label when the metadata names no ClassLabel feature.
LABEL_COLUMNS = ("label", "labels")


@dataclass(frozen=True)
class DumpRow:
    """One row: the media (encoded bytes, or a file path resolved against the dump's folder), its label (None:
    unlabelled), the split its file or folder names, and `source` ("file (row 7)") for messages."""

    media: Path | bytes
    label: str | None
    split: str | None
    source: str


@dataclass(frozen=True)
class DumpKind:
    """What a domain reads from a dump: the `datasets` feature type of the media ("Image", "Audio"), the column
    names tried without one, the word for the media in messages, the error type, and what to install for
    pyarrow."""

    feature_type: str
    columns: Sequence[str]
    noun: str
    error: type[UserError]
    install: str


def _pyarrow(kind: DumpKind) -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise kind.error(f"reading Parquet/Arrow data needs pyarrow; install it with: {kind.install}") from None
    return pyarrow


def is_dump_folder(folder: Path) -> bool:
    """Whether `folder` holds `.parquet` or `.arrow` files (up to three levels down)."""
    return any(
        p.is_file() and visible(p, folder)
        for suffix in HF_SUFFIXES
        for pattern in (f"*{suffix}", f"*/*{suffix}", f"*/*/*{suffix}")
        for p in folder.glob(pattern)
    )


def _dump_files(path: Path, kind: DumpKind) -> list[Path]:
    if path.is_file():
        return [path]
    for suffix in HF_SUFFIXES:
        found = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file() and visible(p, path))
        if found:
            return found
    raise kind.error(f"{path}: no .parquet or .arrow files in this folder")


def _split_of(file: Path, root: Path) -> str | None:
    """The split a file belongs to, from its name ("train-00000-of-00001.parquet") or a folder between it and the
    root ("train/data-00000-of-00001.arrow"); None when neither names one."""
    prefix = re.split(r"[-_.]", file.stem, maxsplit=1)[0].lower()
    if prefix in SPLIT_NAMES:
        return SPLIT_NAMES[prefix]
    if file == root:
        return None
    for part in reversed(file.relative_to(root).parent.parts):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


def read_table(file: Path, kind: DumpKind) -> Any:
    """A Parquet file or an Arrow stream/file (`datasets`' save_to_disk) as a pyarrow Table; one line if unreadable."""
    pa = _pyarrow(kind)
    try:
        if file.suffix.lower() == ".arrow":
            with pa.memory_map(str(file)) as source:
                try:
                    return pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    return pa.ipc.open_file(source).read_all()
        return pa.parquet.read_table(file)
    except (pa.ArrowException, OSError) as error:
        what = "Arrow" if file.suffix.lower() == ".arrow" else "Parquet"
        raise kind.error(f"{file}: not a readable {what} file ({described(error)})") from None


def _features(file: Path, table: Any) -> dict[str, Any]:
    """The `datasets` features of a table: from its schema metadata, else a dataset_info.json beside it."""
    metadata = table.schema.metadata or {}
    try:
        if b"huggingface" in metadata:
            info = json.loads(metadata[b"huggingface"])
            features = info.get("info", {}).get("features") or info.get("features")
            if isinstance(features, dict):
                return features
        info_file = file.parent / "dataset_info.json"
        if info_file.is_file():
            features = json.loads(info_file.read_text(encoding="utf-8")).get("features")
            if isinstance(features, dict):
                return features
    except (ValueError, AttributeError):
        pass  # unreadable metadata: fall back to the column names
    return {}


def _column(features: dict[str, Any], names: Sequence[str], feature_type: str, fallback: Sequence[str]) -> str | None:
    typed = [name for name, spec in features.items() if isinstance(spec, dict) and spec.get("_type") == feature_type]
    for name in typed + list(fallback):
        if name in names:
            return name
    return None


def _media(file: Path, column: Any, name: str, kind: DumpKind) -> list[Path | bytes]:
    pa = _pyarrow(kind)
    column_type = column.type
    media: list[Path | bytes] = []
    for row, value in enumerate(column.to_pylist()):
        if isinstance(value, dict):  # the datasets Image / Audio feature: struct<bytes: binary, path: string>
            data, where = value.get("bytes"), value.get("path")
        elif pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type):
            data, where = value, None
        elif pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
            data, where = None, value
        else:
            raise kind.error(
                f"{file}: column {name!r} holds {column_type}; expected {kind.noun} bytes or paths (a datasets "
                f"{kind.feature_type} feature)"
            )
        if data is not None:
            media.append(bytes(data))
        elif where:
            media.append(Path(where) if Path(where).is_absolute() else file.parent / where)
        else:
            raise kind.error(f"{file} (row {row}): no {kind.noun} (neither bytes nor a path)")
    return media


def _labels(file: Path, column: Any, name: str, names: list[str] | None, kind: DumpKind) -> list[str | None]:
    pa = _pyarrow(kind)
    values = column.to_pylist()
    if pa.types.is_integer(column.type):
        labels: list[str | None] = []
        for row, value in enumerate(values):
            if value is None or value < 0:  # datasets writes -1 for "no label"
                labels.append(None)
            elif names is None:
                labels.append(str(value))
            elif value >= len(names):
                raise kind.error(
                    f"{file} (row {row}): label {value} is out of range for the {len(names)} ClassLabel names"
                )
            else:
                labels.append(names[value])
        return labels
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [value if value else None for value in values]
    raise kind.error(f"{file}: label column {name!r} holds {column.type}; expected integers or strings")


def read_dump(path: Path, kind: DumpKind, require_label: bool = True) -> tuple[list[DumpRow], list[str] | None]:
    """(rows, ClassLabel names or None) of a `datasets` dump at `path` (a file or a folder; the split of each file
    comes from its name or a folder name). The media column is the feature typed `kind.feature_type`, else the
    first of `kind.columns`; the label column the `ClassLabel` feature, else `label`/`labels`: integers named by
    the ClassLabel names of the schema metadata (no names: the integers as text; -1: no label) or strings."""
    rows: list[DumpRow] = []
    class_names: list[str] | None = None
    files = _dump_files(path, kind)
    for file in files:
        table = read_table(file, kind)
        features = _features(file, table)
        columns = list(table.column_names)
        media_column = _column(features, columns, kind.feature_type, kind.columns)
        if media_column is None:
            raise kind.error(
                f"{file}: no {kind.noun} column (columns: {', '.join(columns)}); expected an {kind.feature_type} "
                f"feature or a column named {kind.columns[0]}"
            )
        label_column = _column(features, columns, "ClassLabel", LABEL_COLUMNS)
        if label_column is None and require_label:
            raise kind.error(
                f"{file}: no label column (columns: {', '.join(columns)}); expected a ClassLabel feature or a "
                f"column named label"
            )
        names = None
        spec = features.get(label_column) if label_column is not None else None
        if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and isinstance(spec.get("names"), list):
            names = [str(name) for name in spec["names"]]
            if class_names is not None and names != class_names:
                raise kind.error(f"{file}: its ClassLabel names differ from those of {files[0]}")
            class_names = names
        media = _media(file, table.column(media_column), media_column, kind)
        labels: list[str | None] = [None] * len(media)
        if label_column is not None:
            labels = _labels(file, table.column(label_column), label_column, names, kind)
        split = _split_of(file, path) if path.is_dir() else None
        rows += [
            DumpRow(item, label, split, f"{file} (row {row})")
            for row, (item, label) in enumerate(zip(media, labels, strict=True))
        ]
    if not rows:
        raise kind.error(f"{path}: no rows")
    return rows, class_names
