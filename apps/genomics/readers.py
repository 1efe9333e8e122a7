"""Reading DNA from files: FASTA/FASTQ (plain, gzip or BGZF; parsed by biopython), BED intervals over an indexed
FASTA, CSV/TSV tables with sequence,label columns, one FASTA (or BED) file per class; and reproducible splits.

Every problem with a user's file raises `GenomicsDataError`, whose message is one line naming the file (and the
line where one applies) and what to do. Sequences keep their case here; the tokenizer normalises them.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from mambakit.errors import MambakitError
from mambakit.labelled_files import check_label_spellings, check_readable
from mambakit.splits import check_fractions

from .tokenizer import DNATokenizer

#: File name endings (after an optional compression suffix) of each input kind; compared case-insensitively.
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".faa", ".frn", ".fas", ".seq")
FASTQ_SUFFIXES = (".fq", ".fastq")
BED_SUFFIXES = (".bed",)
TABLE_SUFFIXES = (".csv", ".tsv")
#: Compression endings stripped (one, the last) before the format suffix is read. Whether a file is compressed
#: is decided by its bytes (`_open_text`), not its name.
COMPRESSED_SUFFIXES = (".gz", ".bgz", ".bgzf")
#: Names of user-given split folders (and `split` column values), each mapped to its canonical split.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}

_TOKENIZER = DNATokenizer()


class GenomicsDataError(MambakitError, ValueError):
    """Bad genomics input; the message is one line: `file[:line]: what is wrong; what to do`."""


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence as read: its name, the bases (case kept), its label when the input has one, where it came
    from ("file:line" or "file (record name)", for messages), and the split a table row assigns it to."""

    name: str
    sequence: str
    label: str | None = None
    source: str = ""
    split: str | None = None


@dataclass(frozen=True)
class Region:
    """A half-open interval [start, end) of a contig, 0-based as in BED."""

    contig: str
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class LabelledData:
    """Labelled sequences: `classes` are the sorted class names (a label's index is its class id); `splits`
    maps "train"/"val"/"test" to record indices when the user gave the split, else it is None."""

    records: list[SequenceRecord]
    classes: list[str]
    splits: dict[str, list[int]] | None = None


# --- opening files ------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise GenomicsDataError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise GenomicsDataError(f"{path}: is a directory; expected a file")
    check_readable(path, GenomicsDataError)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _open_text(path: Path) -> TextIO:
    """The file as text (gzip/BGZF recognised by its magic bytes, not its name); universal newlines turn CRLF
    into LF."""
    _check_file(path)
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn what decoding or decompressing a bad file raises into one GenomicsDataError line."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise GenomicsDataError(
            f"{path}: not a text file (undecodable byte at offset {error.start}); expected "
            f"FASTA, FASTQ, BED or CSV/TSV text, plain or gzipped"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise GenomicsDataError(
            f"{path}: truncated or corrupt gzip data ({error}); copy or download the file again"
        ) from None


def _strip_suffixes(path: Path) -> tuple[str, str]:
    """(name without compression and format suffixes, format suffix lowercased) of a file name: one trailing
    compression suffix (.gz, .bgz, .bgzf) is dropped, then the LAST remaining suffix is the format
    ("sample.csvdump.fa.gz" -> ("sample.csvdump", ".fa")); ("name", "") when there is none."""
    name = path.name
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext.lower()}") if dot and stem else (name, "")


def class_name(path: Path) -> str:
    """The class a per-class file stands for: its name without format and compression suffixes
    ("oct4.fa.gz" -> "oct4")."""
    return _strip_suffixes(path)[0]


# --- FASTA / FASTQ ------------------------------------------------------------------------------------------


def _sniff(path: Path) -> tuple[str, int]:
    """("fasta" | "fastq", line number of the first record) from the first non-blank line."""
    with _reading(path), _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if line[0] == ">":
                return "fasta", number
            if line[0] == "@":
                return "fastq", number
            shown = line.strip()[:30]
            raise GenomicsDataError(
                f"{path}:{number}: not FASTA or FASTQ: a FASTA record starts with '>' and a "
                f"FASTQ one with '@', got {shown!r}"
            )
    raise GenomicsDataError(f"{path}: empty file; expected FASTA or FASTQ records")


def _locate(path: Path, kind: str, record_index: int, offset: int) -> int:
    """Line number of base `offset` of record `record_index` (0-based), found by reading the file again; only
    error paths call it."""
    with _reading(path), _open_text(path) as handle:
        if kind == "fastq":  # biopython reads 4-line records; the sequence is the second line
            return 4 * record_index + 2
        records, seen = -1, 0
        for number, line in enumerate(handle, 1):
            if line.startswith(">"):
                records += 1
                continue
            if records == record_index:
                bases = len(line.rstrip().replace(" ", ""))
                if seen + bases > offset:
                    return number
                seen += bases
    return 0


def iter_sequences(path: str | Path) -> Iterator[SequenceRecord]:
    """The records of a FASTA or FASTQ file (plain, gzip or BGZF), checked: every character must be a base or an
    IUPAC code (either case). Records with no bases are skipped with one warning for the file."""
    for _, record in _numbered_sequences(Path(path)):
        yield record


def _numbered_sequences(path: Path) -> Iterator[tuple[int, SequenceRecord]]:
    """(position in the file, from 1, counting empty records too; record) of `iter_sequences`' records."""
    from Bio.SeqIO.FastaIO import SimpleFastaParser
    from Bio.SeqIO.QualityIO import FastqGeneralIterator

    kind, _ = _sniff(path)
    empty = 0
    with _reading(path), _open_text(path) as handle:
        parser = SimpleFastaParser(handle) if kind == "fasta" else FastqGeneralIterator(handle)
        index = -1
        try:
            for index, (title, sequence, *_) in enumerate(parser):
                name = title.split(None, 1)[0] if title.strip() else f"record{index + 1}"
                if not sequence:
                    empty += 1
                    continue
                bad = _TOKENIZER.first_invalid(sequence)
                if bad >= 0:
                    line = _locate(path, kind, index, bad)
                    raise GenomicsDataError(
                        f"{path}:{line}: record {name!r} holds {sequence[bad]!r}, which is "
                        f"neither a base (ACGTUN) nor an IUPAC code; fix or remove the record"
                    )
                yield index + 1, SequenceRecord(name, sequence, source=f"{path} (record {name})")
        except ValueError as error:  # biopython's FASTQ checks
            if isinstance(error, GenomicsDataError):
                raise
            raise GenomicsDataError(f"{path}: malformed {kind.upper()} after record {index + 1} ({error})") from None
    if empty:
        warnings.warn(f"{path}: skipped {empty} record(s) with no bases", stacklevel=3)


def read_sequences(path: str | Path) -> list[SequenceRecord]:
    """All records of a FASTA/FASTQ file (see `iter_sequences`); an error when none holds a base."""
    records = list(iter_sequences(path))
    if not records:
        raise GenomicsDataError(f"{path}: no sequences (every record is empty)")
    return records


def read_genome(path: str | Path) -> list[SequenceRecord]:
    """The contigs of a genome FASTA (see `iter_sequences`), whose names must be unique: a name that repeats is an
    error naming both records' positions, since one contig would otherwise silently replace the other."""
    path = Path(path)
    records: list[SequenceRecord] = []
    positions: dict[str, int] = {}
    for position, record in _numbered_sequences(path):
        first = positions.setdefault(record.name, position)
        if first != position:
            raise GenomicsDataError(
                f"{path}: contig name {record.name!r} is used by records {first} and {position}; contig names must "
                f"be unique: rename or remove one"
            )
        records.append(record)
    if not records:
        raise GenomicsDataError(f"{path}: no sequences (every record is empty)")
    return records


class IndexedFasta:
    """Random access to the contigs of a FASTA file by name, without reading the whole file: through biopython's
    `Bio.SeqIO.index` for plain and BGZF-compressed files (`bgzip` output); a plain-gzip file cannot be
    indexed, so it is read into memory once. The contig last fetched is cached (BED files are usually sorted).
    """

    def __init__(self, path: str | Path) -> None:
        from Bio import SeqIO

        self.path = Path(path)
        _sniff(self.path)
        self._cache: tuple[str, str] | None = None
        self._in_memory: dict[str, str] | None = None
        try:
            self._index = SeqIO.index(str(self.path), "fasta")
        except ValueError as error:
            if "Duplicate key" in str(error):
                raise GenomicsDataError(f"{self.path}: {error}; contig names must be unique") from None
            # Plain gzip has no random access: read it whole (fine for the small genomes it is used for).
            self._index = None
            self._in_memory = {record.name: record.sequence for record in read_genome(self.path)}
        if not self.names:
            raise GenomicsDataError(f"{self.path}: no FASTA records")

    @property
    def names(self) -> list[str]:
        """Contig names (the first word of each header), in file order."""
        return list(self._in_memory if self._in_memory is not None else self._index)

    def __contains__(self, name: str) -> bool:
        return name in (self._in_memory if self._in_memory is not None else self._index)

    def contig(self, name: str) -> str:
        """The whole sequence of contig `name` (checked like `iter_sequences` does)."""
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        if name not in self:
            raise GenomicsDataError(f"{self.path}: no contig {name!r}; it has {_some(self.names)}")
        if self._in_memory is not None:
            sequence = self._in_memory[name]
        else:
            with _reading(self.path):
                sequence = str(self._index[name].seq)
            bad = _TOKENIZER.first_invalid(sequence)
            if bad >= 0:
                line = _locate(self.path, "fasta", self.names.index(name), bad)
                raise GenomicsDataError(
                    f"{self.path}:{line}: contig {name!r} holds {sequence[bad]!r}, which is "
                    f"neither a base (ACGTUN) nor an IUPAC code"
                )
        self._cache = (name, sequence)
        return sequence

    def fetch(self, region: Region) -> str:
        """The bases of `region`; an error when it runs past the contig's end."""
        sequence = self.contig(region.contig)
        if region.end > len(sequence):
            raise GenomicsDataError(
                f"{self.path}: interval {region.contig}:{region.start}-{region.end} ends past "
                f"the contig's length {len(sequence)}"
            )
        return sequence[region.start : region.end]


# --- BED ----------------------------------------------------------------------------------------------------


def _bed_rows(path: Path) -> Iterator[tuple[int, Region, list[str]]]:
    """(line number, interval, all fields) of each data line; header, comment and blank lines skipped."""
    with _reading(path), _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(fields) < 3:
                raise GenomicsDataError(
                    f"{path}:{number}: a BED line needs chrom, start and end, got {len(fields)} field(s)"
                )
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise GenomicsDataError(
                    f"{path}:{number}: start and end must be integers, got {fields[1]!r} and {fields[2]!r}"
                ) from None
            if not 0 <= start < end:
                raise GenomicsDataError(f"{path}:{number}: need 0 <= start < end, got {start} and {end}")
            yield number, Region(fields[0], start, end), fields


def read_bed(path: str | Path, genome: IndexedFasta, label_column: int | None = None) -> list[SequenceRecord]:
    """The sequences of a BED file's intervals in `genome`; minus-strand intervals (column 6 "-") are reverse
    complemented. `label_column` (0-based, e.g. 3 for the name column) gives each record's label."""
    path = Path(path)
    records = []
    for number, region, fields in _bed_rows(path):
        if region.contig not in genome:
            raise GenomicsDataError(f"{path}:{number}: contig {region.contig!r} is not in {genome.path}")
        try:
            sequence = genome.fetch(region)
        except GenomicsDataError as error:
            raise GenomicsDataError(f"{path}:{number}: {error}") from None
        if len(fields) > 5 and fields[5] == "-":
            sequence = _TOKENIZER.reverse_complement(sequence)
        label = None
        if label_column is not None:
            if len(fields) <= label_column:
                raise GenomicsDataError(f"{path}:{number}: no column {label_column + 1} to read the label from")
            label = fields[label_column]
        name = fields[3] if len(fields) > 3 else f"{region.contig}:{region.start}-{region.end}"
        records.append(SequenceRecord(name, sequence, label, f"{path}:{number}"))
    if not records:
        raise GenomicsDataError(f"{path}: no intervals")
    return records


def read_split_bed(path: str | Path) -> dict[str, list[Region]]:
    """User-given genome splits: a BED file whose 4th column names each interval's split (train/val/test)."""
    path = Path(path)
    splits: dict[str, list[Region]] = {}
    for number, region, fields in _bed_rows(path):
        split = SPLIT_NAMES.get(fields[3].lower()) if len(fields) > 3 else None
        if split is None:
            raise GenomicsDataError(f"{path}:{number}: column 4 must name the split (train, val or test)")
        splits.setdefault(split, []).append(region)
    if "train" not in splits:
        raise GenomicsDataError(f"{path}: no train intervals")
    return splits


# --- tables -------------------------------------------------------------------------------------------------


def read_table(path: str | Path, require_label: bool = True) -> list[SequenceRecord]:
    """Records of a CSV or TSV file (gzip allowed) with a header naming a `sequence` column, a `label` column
    (optional when `require_label` is false), and optionally `name`/`id` and `split` (train/val/test)."""
    path = Path(path)
    records = []
    label_rows: list[tuple[str | None, int]] = []
    with _reading(path), _open_text(path) as handle:
        header_line = handle.readline()
        delimiter = "\t" if "\t" in header_line else ","
        reader = csv.reader(io.StringIO(header_line), delimiter=delimiter)
        header = [field.strip().lower() for field in next(reader, [])]
        columns = {name: i for i, name in enumerate(header)}
        wanted = ("sequence", "label") if require_label else ("sequence",)
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise GenomicsDataError(
                f"{path}:1: no {' or '.join(repr(m) for m in missing)} column (header: "
                f"{header_line.strip()[:80]!r}); a table needs a header with sequence,label "
                f"columns"
            )
        name_column = columns.get("name", columns.get("id"))
        for number, row in enumerate(csv.reader(handle, delimiter=delimiter), 2):
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise GenomicsDataError(f"{path}:{number}: {len(row)} field(s), but the header has {len(header)}")
            sequence = row[columns["sequence"]].strip()
            if not sequence:
                raise GenomicsDataError(f"{path}:{number}: empty sequence")
            bad = _TOKENIZER.first_invalid(sequence)
            if bad >= 0:
                raise GenomicsDataError(
                    f"{path}:{number}: sequence holds {sequence[bad]!r}, which is neither a base "
                    f"(ACGTUN) nor an IUPAC code"
                )
            label = row[columns["label"]].strip() if "label" in columns else None
            if require_label and not label:
                raise GenomicsDataError(f"{path}:{number}: empty label")
            split = None
            if "split" in columns:
                split = SPLIT_NAMES.get(row[columns["split"]].strip().lower())
                if split is None:
                    raise GenomicsDataError(
                        f"{path}:{number}: split must be train, val or test, got {row[columns['split']]!r}"
                    )
            name = row[name_column].strip() if name_column is not None else f"row{number}"
            records.append(SequenceRecord(name, sequence, label, f"{path}:{number}", split))
            label_rows.append((label, number))
    if not records:
        raise GenomicsDataError(f"{path}: no rows below the header")
    check_label_spellings(path, label_rows, GenomicsDataError)
    return records


# --- labelled data sets -------------------------------------------------------------------------------------


FileKind = Literal["table", "bed", "sequences"]


def sequence_file_kind(path: str | Path) -> FileKind:
    """How to read a --data file, from its name: drop one trailing compression suffix (.gz, .bgz, .bgzf), then
    the last suffix alone decides, case-insensitively: .csv/.tsv -> "table" (`read_table`), .bed -> "bed"
    (`read_bed`), anything else -> "sequences" (`read_sequences`, which tells FASTA from FASTQ by content and
    gives a one-line error for a file that is neither). So "sample.csvdump.fa" is FASTA and "x.csv.gz" a table.
    """
    suffix = _strip_suffixes(Path(path))[1]
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in BED_SUFFIXES:
        return "bed"
    return "sequences"  # FASTA_SUFFIXES, FASTQ_SUFFIXES, no suffix or an unknown one: sniffed by content


def read_records(
    path: str | Path, genome: IndexedFasta | None = None, require_label: bool = False
) -> list[SequenceRecord]:
    """The records of any supported file, by its name (see `sequence_file_kind`): FASTA/FASTQ, BED (needs
    `genome`) or CSV/TSV."""
    path = Path(path)
    _check_file(path)
    kind = sequence_file_kind(path)
    if kind == "table":
        return read_table(path, require_label)
    if kind == "bed":
        if genome is None:
            raise GenomicsDataError(
                f"{path}: a BED file holds intervals, not bases; also give the genome FASTA they refer to"
            )
        return read_bed(path, genome)
    return read_sequences(path)


def _class_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise GenomicsDataError(f"{folder}: no files; expected one FASTA (or BED) file per class")
    return files


def _read_class_files(files: Sequence[Path], genome: IndexedFasta | None) -> list[SequenceRecord]:
    names = [class_name(path) for path in files]
    if len(set(names)) != len(names):
        raise GenomicsDataError(
            f"{files[0].parent}: two files name the same class ({', '.join(map(str, files))}); "
            f"each class needs one file"
        )
    records = []
    for path, name in zip(files, names, strict=True):
        if sequence_file_kind(path) == "table":
            raise GenomicsDataError(
                f"{path}: a table among per-class files; give either one table with a label "
                f"column or one FASTA file per class"
            )
        records += [SequenceRecord(r.name, r.sequence, name, r.source) for r in read_records(path, genome)]
    return records


def load_labelled(data: str | Path | Sequence[str | Path], genome: str | Path | None = None) -> LabelledData:
    """Labelled sequences from what a user passes as --data:

    - a CSV/TSV file with sequence,label columns (and optionally a split column);
    - several FASTA/FASTQ (or BED, with `genome`) files, one per class: the class is the file name without its
      suffixes;
    - a folder of such per-class files, or a folder with train/, val/ and test/ subfolders of them (the user's
      split).
    """
    paths = [Path(p) for p in ([data] if isinstance(data, str | Path) else data)]
    if not paths:
        raise GenomicsDataError("no data given; pass a CSV/TSV file, per-class FASTA files or a folder of them")
    fasta = IndexedFasta(genome) if genome is not None else None
    splits = None
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        subfolders = {
            SPLIT_NAMES[p.name.lower()]: p for p in folder.iterdir() if p.is_dir() and p.name.lower() in SPLIT_NAMES
        }
        if subfolders:
            if "train" not in subfolders:
                raise GenomicsDataError(f"{folder}: split subfolders {sorted(subfolders)} but no train/")
            records, splits = [], {}
            for split in ("train", "val", "test"):
                if split not in subfolders:
                    continue
                subfolder = subfolders[split]
                part = _read_class_files(_class_files(subfolder), fasta)
                splits[split] = list(range(len(records), len(records) + len(part)))
                records += part
        else:
            records = _read_class_files(_class_files(folder), fasta)
    elif len(paths) == 1:
        _check_file(paths[0])
        if sequence_file_kind(paths[0]) != "table":
            raise GenomicsDataError(
                f"{paths[0]}: one sequence file holds no labels; give one FASTA file per class "
                f"(the class is the file's name), a folder of them, or a CSV/TSV with "
                f"sequence,label columns"
            )
        records = read_table(paths[0])
        splits = _table_splits(paths[0], records)
    else:
        records = _read_class_files(paths, fasta)
    classes = sorted({record.label for record in records if record.label is not None})
    if len(classes) < 2:
        raise GenomicsDataError(
            f"{paths[0]}: found {len(classes)} class(es) {classes}; classification needs at least 2"
        )
    return LabelledData(records, classes, splits)


def _table_splits(path: Path, records: Sequence[SequenceRecord]) -> dict[str, list[int]] | None:
    if all(record.split is None for record in records):
        return None
    splits: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if record.split is None:
            raise GenomicsDataError(f"{record.source}: no split, though other rows name theirs")
        splits.setdefault(record.split, []).append(index)
    if "train" not in splits:
        raise GenomicsDataError(f"{path}: the split column names no train rows")
    return splits


def encode_labels(records: Sequence[SequenceRecord], classes: Sequence[str]) -> np.ndarray:
    """Class ids (int64) of the records' labels; a label outside `classes` (e.g. at predict time, with a model
    trained on other classes) is an error naming the record's file and line."""
    index = {name: i for i, name in enumerate(classes)}
    ids = np.empty(len(records), dtype=np.int64)
    for row, record in enumerate(records):
        if record.label not in index:
            raise GenomicsDataError(
                f"{record.source}: label {record.label!r} is not one of the model's classes {list(classes)}"
            )
        ids[row] = index[record.label]
    return ids


# --- splits -------------------------------------------------------------------------------------------------


def split_genome(
    lengths: Mapping[str, int], val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0
) -> dict[str, list[Region]]:
    """Seeded train/val/test split of a genome for pretraining, so held-out bases are never trained on.

    By whole contigs (chromosomes) when there are enough: contigs in a seeded order fill test, then val, to at
    least their fractions of the bases, the rest is train. When that cannot leave train at least half of the
    bases with non-empty val and test (a single chromosome, or one that dominates), every contig is cut instead:
    its last test_fraction is test, the val_fraction before that val, the start train.
    """
    check_fractions(val_fraction, test_fraction)
    names = list(lengths)
    total = sum(lengths.values())
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    splits: dict[str, list[Region]] = {"train": [], "val": [], "test": []}
    filled = {"test": 0, "val": 0}
    for name in order:
        region = Region(name, 0, lengths[name])
        target = next(
            (
                split
                for split, fraction in (("test", test_fraction), ("val", val_fraction))
                if filled[split] < fraction * total
            ),
            "train",
        )
        if target != "train":
            filled[target] += len(region)
        splits[target].append(region)
    train_bases = total - filled["test"] - filled["val"]
    enough = all(splits[s] or f == 0 for s, f in (("val", val_fraction), ("test", test_fraction)))
    if train_bases >= total / 2 and enough:
        return splits
    splits = {"train": [], "val": [], "test": []}
    for name in names:
        n = lengths[name]
        test_start = n - round(n * test_fraction)
        val_start = test_start - round(n * val_fraction)
        for split, start, end in (("train", 0, val_start), ("val", val_start, test_start), ("test", test_start, n)):
            if end > start:
                splits[split].append(Region(name, start, end))
    return splits


def _some(names: Sequence[str], shown: int = 5) -> str:
    text = ", ".join(names[:shown])
    return text if len(names) <= shown else f"{text} (and {len(names) - shown} more)"
