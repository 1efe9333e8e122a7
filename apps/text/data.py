"""Text corpora: the user's files, folders, globs and `datasets` sources, or the embedded default (Python's own
standard library sources, present wherever Python is). Documents are read one at a time and their tokens kept
as numpy arrays, spilled to disk when large, so a corpus need not fit in memory."""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice
from pathlib import Path
from typing import IO, Any

import numpy as np

from mambakit.domains import Requirement
from mambakit.errors import UserError, described, first_line
from mambakit.labelled_files import check_readable

from .tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".html", ".xml", ".tex", ""}
#: Files of records, whose text is one field of each record (--text-field).
RECORD_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow"}
#: The default corpus: about this many bytes of the standard library's top-level modules, in name order.
DEFAULT_CORPUS_BYTES = 3_000_000
#: How undecodable bytes are handled (--errors): a one-line error naming the file and offset, or U+FFFD.
ERROR_MODES = ("strict", "replace")
#: A --data entry with this prefix is read through `datasets.load_dataset` (a hub id or a local folder).
HUB_PREFIX = "hf:"
GLOB_CHARACTERS = "*?["
#: Tokens a stream holds in memory before the rest goes to a file in the spill folder.
SPILL_TOKENS = 2**26
#: Documents encoded per tokenizer call (a batch also ends after BATCH_CHARACTERS characters).
BATCH_DOCUMENTS = 1024
BATCH_CHARACTERS = 2**24
#: Parquet rows read at a time: text rows can be long, so far fewer than pyarrow's default.
PARQUET_BATCH_ROWS = 1024
INSTALL_TEXT = "pip install 'mambakit[text]'"
#: The optional packages of --data sources (the `text` extra brings both: datasets needs pyarrow).
PYARROW = Requirement("pyarrow.parquet", "pyarrow", "text", needed_for=".parquet/.arrow files in --data")
DATASETS = Requirement("datasets", "datasets", "text", needed_for=f"{HUB_PREFIX}NAME sources in --data")


@dataclass(frozen=True)
class HubSource:
    """A `datasets` source given as hf:NAME or hf:NAME:CONFIG: a hub dataset id (needs a network) or a local
    folder of data files; its "train" split is streamed."""

    name: str
    config: str | None = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.name + (f":{self.config}" if self.config else "")


Source = Path | HubSource


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


def expand_paths(paths: list[Path]) -> list[Source]:
    """Files as given; the text files inside given folders (recursively, sorted); the files a glob pattern that
    is not itself a path matches (sorted, `**` recursive); and hf:NAME[:CONFIG] entries as `HubSource`s. A given
    file, or a file or folder inside a given folder, that this user may not read is a UserError naming it."""
    sources: list[Source] = []
    for path in paths:
        given = str(path)
        if given.startswith(HUB_PREFIX):
            sources.append(_hub_source(given))
        elif path.is_dir():
            readable = TEXT_SUFFIXES | RECORD_SUFFIXES
            check_readable(path, UserError)
            found: list[Path] = []
            for entry in sorted(path.rglob("*")):
                if entry.is_dir():
                    check_readable(entry, UserError)  # else the files of one it may not list are silently left out
                elif entry.is_file() and entry.suffix.lower() in readable:
                    check_readable(entry, UserError)
                    found.append(entry)
            if not found:
                suffixes = ", ".join(sorted(readable - {""}))
                raise UserError(f"{path}: no text files in this folder (looked for {suffixes})")
            sources.extend(found)
        elif path.is_file():
            check_readable(path, UserError)
            sources.append(path)
        elif any(character in given for character in GLOB_CHARACTERS):
            # Folders are left out: `**` matches every folder on the way to the files.
            matches = sorted(Path(match) for match in glob.glob(given, recursive=True) if os.path.isfile(match))
            if not matches:
                raise UserError(f"{path}: no files match")
            sources.extend(matches)
        else:
            raise UserError(f"{path}: no such file or folder")
    return sources


def _hub_source(given: str) -> HubSource:
    name, _, config = given.removeprefix(HUB_PREFIX).partition(":")
    if not name:
        raise UserError(f"{given}: name a dataset: hf:NAME or hf:NAME:CONFIG (a hub id or a local folder)")
    return HubSource(name, config or None)


def iter_documents(sources: Iterable[Source], text_field: str = "text", errors: str = "strict") -> Iterator[str]:
    """The documents of `sources`, one at a time: each text file's text, and the `text_field` of every record of
    each .jsonl, .json (a list of records, or one object per line), .csv, .tsv, .parquet or .arrow file and of
    each `HubSource` (empty and null fields are skipped). A file that is not UTF-8 (with errors="strict"; with
    "replace" its invalid bytes become U+FFFD), a line that is not JSON, a missing field: one UserError line
    naming the file (and line, row or offset)."""
    if errors not in ERROR_MODES:
        raise UserError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
    for source in sources:
        if isinstance(source, HubSource):
            yield from _hub_texts(source, text_field)
            continue
        try:
            yield from _file_texts(source, text_field, errors)
        except UnicodeDecodeError:
            # Decoding a file handle fails at an offset into its current chunk: find the file's own offset.
            raise UserError(
                f"{source}: not UTF-8 text (invalid byte at offset {_first_invalid_byte(source)}); convert it, "
                f"leave it out or pass --errors replace"
            ) from None


def read_documents(files: Iterable[Source], text_field: str = "text", errors: str = "strict") -> list[str]:
    """Every document of `files` in a list (`iter_documents` reads them one at a time)."""
    return list(iter_documents(files, text_field, errors))


def _first_invalid_byte(path: Path) -> int:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(2**20):
            pending = len(decoder.getstate()[0])  # bytes of a character begun in the chunk before
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                return offset - pending + error.start
            offset += len(chunk)
    return offset - len(decoder.getstate()[0])  # the file ends inside a character


def _file_texts(path: Path, text_field: str, errors: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        yield path.read_bytes().decode("utf-8", errors)
    elif suffix == ".parquet":
        yield from _parquet_texts(path, text_field)
    elif suffix == ".arrow":
        yield from _arrow_texts(path, text_field)
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", errors=errors, newline="") as handle:
            rows = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for row in rows:
                value = _field(row, text_field, f"{path} (line {rows.line_num})")
                if value:
                    yield value
    else:
        with path.open(encoding="utf-8", errors=errors) as handle:
            if suffix == ".json" and _first_character(handle) != "{":
                yield from _json_list_texts(path, handle, text_field)
            else:  # JSON Lines (also a .json file of one object per line)
                yield from _json_lines_texts(path, handle, text_field)


def _first_character(handle: IO[str]) -> str:
    """The first character that is not whitespace ("" for none); the handle is back at the start after."""
    while (chunk := handle.read(4096)) and not chunk.strip():
        pass
    handle.seek(0)
    return chunk.lstrip()[:1]


def _json_list_texts(path: Path, handle: IO[str], text_field: str) -> Iterator[str]:
    try:
        records = json.load(handle)  # one JSON value: read whole
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: a JSON {type(records).__name__}; give a list of records or JSON Lines")
    for index, record in enumerate(records):
        value = _field(record, text_field, f"{path} (record {index})")
        if value:
            yield value


def _json_lines_texts(path: Path, lines: Iterable[str], text_field: str) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: line {number} is not JSON ({error.msg}, column {error.colno})") from None
        value = _field(record, text_field, f"{path} (line {number})")
        if value:
            yield value


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


def _column_texts(path: Path, chunks: Iterable[Any], text_field: str) -> Iterator[str]:
    """The texts of a column read in chunks (pyarrow arrays), checked row by row."""
    row = 0
    for chunk in chunks:
        for value in chunk.to_pylist():
            text = _field({text_field: value}, text_field, f"{path} (row {row})")
            row += 1
            if text:
                yield text


def _missing_column(path: Path, columns: list[str], text_field: str) -> UserError:
    return UserError(f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); choose one with --text-field")


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    PYARROW.load(f"{path}: reading Parquet")
    import pyarrow

    try:
        parquet = pyarrow.parquet.ParquetFile(path)
        columns = parquet.schema_arrow.names
        if text_field not in columns:
            raise _missing_column(path, columns, text_field)
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field])
        yield from _column_texts(path, (batch.column(0) for batch in batches), text_field)
    except (pyarrow.ArrowException, OSError) as error:
        raise UserError(f"{path}: not a readable Parquet file ({described(error)})") from None


def _arrow_texts(path: Path, text_field: str) -> Iterator[str]:
    from mambakit.hf_dumps import DumpKind, read_table

    # Memory-mapped: the column is read a chunk at a time.
    table = read_table(path, DumpKind("Value", (text_field,), "text", UserError, INSTALL_TEXT))
    if text_field not in table.column_names:
        raise _missing_column(path, table.column_names, text_field)
    yield from _column_texts(path, table.column(text_field).chunks, text_field)


def _hub_texts(source: HubSource, text_field: str) -> Iterator[str]:
    """The `text_field` of each record of the source's "train" split, streamed (nothing is downloaded up front);
    a hub id needs a network, a local folder of data files does not."""
    datasets = DATASETS.load(f"{source}: reading a `datasets` source")
    # `datasets` raises many exception types (connection, missing split, bad files): each is one line here.
    try:
        records = iter(datasets.load_dataset(source.name, source.config, split="train", streaming=True))
    except Exception as error:
        raise UserError(f"{source}: cannot load it with `datasets` ({first_line(error)})") from None
    for number in count():
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as error:
            raise UserError(f"{source} (record {number}): cannot read it ({first_line(error)})") from None
        value = _field(record, text_field, f"{source} (record {number})")
        if value:
            yield value


def _check_eval_every(eval_every: int) -> None:
    if eval_every < 2:
        raise UserError(f"eval_every must be at least 2 (one document in eval_every is held out), got {eval_every}")


def _is_held_out(index: int, eval_every: int) -> bool:
    return index % eval_every == eval_every - 1


def training_documents(documents: Iterable[str], eval_every: int = 20) -> Iterator[str]:
    """What a tokenizer may be trained on without seeing the text `encode_split` holds out, streamed: with at
    least `eval_every` documents, every one not held out; with fewer, their text up to 90% of its characters
    (those documents are buffered to count them)."""
    _check_eval_every(eval_every)
    stream = iter(documents)
    first = list(islice(stream, eval_every - 1))
    if next(stream, None) is None:  # fewer than eval_every: the next one would have been held out
        budget = int(sum(map(len, first)) * 0.9)
        for text in first:
            if budget <= 0:
                return
            yield text[:budget]
            budget -= len(text)
        return
    yield from first
    for index, text in enumerate(stream, start=eval_every):
        if not _is_held_out(index, eval_every):
            yield text


class _TokenBuffer:
    """A growing token stream: numpy chunks in memory, appended to a file beside `spill_file` (when given) each
    time they pass SPILL_TOKENS; `finish` returns the whole stream, as a read-only memmap of `spill_file` if any
    was written. The file gets its name only when complete, so a stream that another process (or an earlier run
    in this one) still maps is never overwritten."""

    def __init__(self, dtype: Any, spill_file: Path | None) -> None:
        self.dtype, self.spill_file = dtype, spill_file
        self.chunks: list[np.ndarray] = []
        self.in_memory = self.length = 0
        self.partial: Path | None = None

    def append(self, tokens: np.ndarray) -> None:
        self.chunks.append(tokens)
        self.in_memory += len(tokens)
        self.length += len(tokens)
        if self.spill_file is not None and self.in_memory > SPILL_TOKENS:
            self._spill(self.spill_file)

    def clear(self) -> None:
        """Forget the tokens so far (and the file begun for them)."""
        if self.partial is not None:
            self.partial.unlink()
            self.partial = None
        self.chunks, self.in_memory, self.length = [], 0, 0

    def finish(self) -> np.ndarray:
        """The whole stream: in memory, or a read-only memmap of the spill file."""
        if self.partial is None or self.spill_file is None:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, self.dtype)
        self._spill(self.spill_file)
        os.replace(self.partial, self.spill_file)
        self.partial = None
        return np.memmap(self.spill_file, dtype=self.dtype, mode="r", shape=(self.length,))

    def _spill(self, spill_file: Path) -> None:
        if self.partial is None:
            spill_file.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=spill_file.parent, prefix=f"{spill_file.name}.")
            os.close(handle)
            self.partial = Path(name)
        with self.partial.open("ab") as file:
            for chunk in self.chunks:
                chunk.tofile(file)
        self.chunks, self.in_memory = [], 0


def _batches(documents: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """(index, text) pairs in batches of BATCH_DOCUMENTS documents or BATCH_CHARACTERS characters, whichever
    comes first; each batch is read only after the one before was used."""
    batch: list[tuple[int, str]] = []
    characters = 0
    for pair in documents:
        batch.append(pair)
        characters += len(pair[1])
        if len(batch) == BATCH_DOCUMENTS or characters >= BATCH_CHARACTERS:
            yield batch
            batch, characters = [], 0
    if batch:
        yield batch


def _stream_format(tokenizer: Tokenizer) -> tuple[Any, list[int]]:
    """(the token dtype: int16 when the vocabulary fits, else int32; the ids that follow each document)."""
    dtype = np.int16 if tokenizer.vocab_size <= np.iinfo(np.int16).max else np.int32
    return dtype, [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]


def encode_whole(documents: Iterable[str], tokenizer: Tokenizer, spill_dir: Path | None = None) -> np.ndarray:
    """One token stream of every document, in order, each followed by the end-of-text token (when the tokenizer
    has one): what scoring given text whole needs. Past SPILL_TOKENS it goes to whole.tokens in `spill_dir` (when
    given), returned as a read-only memmap, as `encode_split`'s streams do."""
    dtype, separator = _stream_format(tokenizer)
    stream = _TokenBuffer(dtype, None if spill_dir is None else spill_dir / "whole.tokens")
    for batch in _batches(enumerate(documents)):
        ids = tokenizer.encode_batch([text for _, text in batch])
        stream.append(np.array([token for document in ids for token in (*document, *separator)], dtype))
    return stream.finish()


def encode_split(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    eval_every: int = 20,
    spill_dir: Path | None = None,
    keep_train: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Token streams for training and evaluation (int16 when the vocabulary fits, else int32): document i (in
    the given order) is held out when i % eval_every == eval_every - 1, so the split is reproducible and no
    document is in both; when that holds out nothing (fewer documents), the training stream's last tenth is
    held out instead. Each document is followed by the tokenizer's end-of-text token (when it has one). A
    stream past SPILL_TOKENS is written to train.tokens or held_out.tokens in `spill_dir` (when given) and
    returned as a read-only memmap. `keep_train=False` (evaluation) returns an empty training stream and stops
    encoding training documents once the held-out stream has begun."""
    _check_eval_every(eval_every)
    dtype, separator = _stream_format(tokenizer)
    train, held_out = (
        _TokenBuffer(dtype, None if spill_dir is None else spill_dir / f"{name}.tokens")
        for name in ("train", "held_out")
    )

    def needed(index: int) -> bool:
        # Without keep_train, training text matters only while it may still become the held-out tenth.
        return keep_train or held_out.length == 0 or _is_held_out(index, eval_every)

    for batch in _batches((index, text) for index, text in enumerate(documents) if needed(index)):
        streams: dict[bool, list[int]] = {False: [], True: []}
        for (index, _), ids in zip(batch, tokenizer.encode_batch([text for _, text in batch]), strict=True):
            streams[_is_held_out(index, eval_every)].extend([*ids, *separator])
        train.append(np.array(streams[False], dtype))
        held_out.append(np.array(streams[True], dtype))
        if not keep_train and held_out.length:
            train.clear()
    nothing = np.zeros(0, dtype)
    if held_out.length == 0:
        whole = train.finish()
        cut = int(len(whole) * 0.9)
        return whole[:cut] if keep_train else nothing, whole[cut:]
    return train.finish() if keep_train else nothing, held_out.finish()
