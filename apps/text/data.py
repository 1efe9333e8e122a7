"""Text corpora: the user's files and folders, or the embedded default (Python's own standard library sources,
present wherever Python is)."""

from __future__ import annotations

import csv
import io
import json
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

from mambakit.errors import UserError

from .tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".html", ".xml", ".tex", ""}
#: Files of records, whose text is one field of each record (--text-field).
RECORD_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow"}
#: The default corpus: about this many bytes of the standard library's top-level modules, in name order.
DEFAULT_CORPUS_BYTES = 3_000_000


def default_corpus_files() -> list[Path]:
    """Top-level .py modules of this Python's standard library, sorted by name, up to DEFAULT_CORPUS_BYTES."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        files.append(path)
        total += path.stat().st_size
        if total >= DEFAULT_CORPUS_BYTES:
            break
    if not files:
        raise UserError(f"{stdlib}: no standard-library sources found for the default corpus; pass --data")
    return files


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, and the text files inside given folders (recursively, sorted)."""
    files = []
    for path in paths:
        if path.is_dir():
            readable = TEXT_SUFFIXES | RECORD_SUFFIXES
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in readable)
            if not found:
                suffixes = ", ".join(sorted(readable - {""}))
                raise UserError(f"{path}: no text files in this folder (looked for {suffixes})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_documents(files: list[Path], text_field: str = "text") -> list[str]:
    """Each text file's text, and the `text_field` of every record of each .jsonl, .json (a list of records),
    .csv, .tsv, .parquet or .arrow file. A file that is not UTF-8, a line that is not JSON, a missing field: one
    UserError line naming the file (and line or offset)."""
    documents = []
    for path in files:
        if path.suffix.lower() in RECORD_SUFFIXES:
            documents.extend(_record_texts(path, text_field))
            continue
        raw = path.read_bytes()
        try:
            documents.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: not UTF-8 text (invalid byte at offset {error.start}); convert it or leave it out"
            ) from None
    return documents


def _field(record: Any, text_field: str, where: str) -> str | None:
    """The record's text (None for a null), or a one-line error naming the fields it has."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a {type(record).__name__}, not a record of named fields")
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise UserError(f"{where}: no field {text_field!r} (fields: {fields}); choose one with --text-field")
    value = record[text_field]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field {text_field!r} holds {type(value).__name__}, not text")
    return value


def _record_texts(path: Path, text_field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".arrow"):
        from mambakit.hf_dumps import DumpKind, read_table

        table = read_table(path, DumpKind("Value", (text_field,), "text", UserError, "pip install 'mambakit[text]'"))
        if text_field not in table.column_names:
            fields = ", ".join(table.column_names)
            raise UserError(f"{path}: no column {text_field!r} (columns: {fields}); choose one with --text-field")
        values = table.column(text_field).to_pylist()
        found = [_field({text_field: value}, text_field, f"{path} (row {row})") for row, value in enumerate(values)]
        return [value for value in found if value]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from None
    if suffix in (".csv", ".tsv"):
        rows = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        found = [_field(row, text_field, f"{path} (line {rows.line_num})") for row in rows]
        return [value for value in found if value]
    if suffix == ".json" and not text.lstrip().startswith("{"):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: a JSON {type(records).__name__}; give a list of records or JSON Lines")
        found = [_field(record, text_field, f"{path} (record {i})") for i, record in enumerate(records)]
        return [value for value in found if value]
    texts = []  # JSON Lines (also a .json file of one object per line)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: line {number} is not JSON ({error.msg}, column {error.colno})") from None
        value = _field(record, text_field, f"{path} (line {number})")
        if value:
            texts.append(value)
    return texts


def _is_held_out(index: int, count: int, eval_every: int) -> bool:
    return count > 1 and index % eval_every == eval_every - 1


def training_documents(documents: list[str], eval_every: int = 20) -> list[str]:
    """The documents (or, for one document, the part of it) that `encode_split` trains on: what a tokenizer may
    be trained on without seeing the held-out text."""
    if len(documents) == 1:
        return [documents[0][: int(len(documents[0]) * 0.9)]]
    return [text for index, text in enumerate(documents) if not _is_held_out(index, len(documents), eval_every)]


def encode_split(documents: list[str], tokenizer: Tokenizer, eval_every: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Token streams for training and evaluation: every `eval_every`-th document (in the given order) is held
    out, so the split is reproducible and no document is in both. Documents are separated by the tokenizer's
    end-of-text token (when it has one)."""
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    train: list[int] = []
    held_out: list[int] = []
    for index, text in enumerate(documents):
        target = held_out if _is_held_out(index, len(documents), eval_every) else train
        target.extend(tokenizer.encode(text))
        target.extend(separator)
    if not held_out:
        # One document: hold out its last tenth instead.
        cut = int(len(train) * 0.9)
        train, held_out = train[:cut], train[cut:]
    dtype = np.int16 if tokenizer.vocab_size <= np.iinfo(np.int16).max else np.int32
    return np.asarray(train, dtype=dtype), np.asarray(held_out, dtype=dtype)
