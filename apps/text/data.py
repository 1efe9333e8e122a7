"""Text corpora: the user's files and folders, or the embedded default (Python's own standard library sources,
present wherever Python is)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from mambakit.errors import UserError

from .tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".json", ".csv", ".tsv", ".html", ".xml", ".tex", ""}
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
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                suffixes = ", ".join(sorted(TEXT_SUFFIXES - {""}))
                raise UserError(f"{path}: no text files in this folder (looked for {suffixes})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_documents(files: list[Path]) -> list[str]:
    """Each file's text; a file that is not UTF-8 text is a one-line UserError naming it and the byte offset."""
    documents = []
    for path in files:
        raw = path.read_bytes()
        try:
            documents.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: not UTF-8 text (invalid byte at offset {error.start}); convert it or leave it out"
            ) from None
    return documents


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
