"""Genomics --data files are read by their LAST meaningful suffix: one compression suffix (.gz/.bgz/.bgzf) is
dropped, then the final suffix alone picks the reader (.csv/.tsv table, .bed intervals, anything else FASTA/FASTQ
by content), case-insensitively. So "sample.csvdump.fa" is FASTA, not a table (the substring rule's bug). Real
small files, read through `read_records`, the function `predict genomics` dispatches through."""

from __future__ import annotations

import gzip

import pytest
from mambakit.apps.genomics.readers import (
    GenomicsDataError,
    IndexedFasta,
    class_name,
    load_labelled,
    read_records,
    sequence_file_kind,
)

pytest.importorskip("Bio", reason="the genomics app reads files through biopython (pip install mambakit[genomics])")

FASTA = b">s1 first\nACGTACGT\n>s2\nggccNNtt\n"
FASTQ = b"@r1\nACGTN\n+\nIIIII\n@r2\nacg\n+\n@@@\n"
TABLE = "name,sequence,label\nx,ACGT,oct4\ny,GGCC,mafk\n"
GENOME = ">chr1\nACGTACGTAC\nGGGGTTTTAA\n"


def _bgzf(path, data: bytes):
    from Bio import bgzf

    with bgzf.BgzfWriter(str(path), "wb") as handle:
        handle.write(data)
    return path


def _pairs(records):
    return [(r.name, r.sequence, r.label) for r in records]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sample.csvdump.fa", "sequences"),
        ("x.csv", "table"),
        ("x.csv.gz", "table"),
        ("x.tsv", "table"),
        ("X.TSV.GZ", "table"),
        ("x.bed", "bed"),
        ("peaks.fa.bed", "bed"),
        ("x.bed.bgz", "bed"),
        ("sample.bed.fa", "sequences"),
        ("reads.fastq.gz", "sequences"),
        ("genome.fa.bgz", "sequences"),
        ("genome.fa.bgzf", "sequences"),
        ("X.FA", "sequences"),
        ("proteins.faa", "sequences"),
        ("reads", "sequences"),
        ("reads.gz", "sequences"),
        ("table.csv.txt", "sequences"),
        ("dir.csv/reads.fa", "sequences"),
        (".csv", "sequences"),
        ("x.csv.gz.fa", "sequences"),
    ],
)
def test_the_last_suffix_after_compression_decides(name, kind):
    assert sequence_file_kind(name) == kind


def test_fasta_whose_name_contains_csv_reads_as_fasta(tmp_path):
    path = tmp_path / "sample.csvdump.fa"
    path.write_bytes(FASTA)
    assert _pairs(read_records(path)) == [("s1", "ACGTACGT", None), ("s2", "ggccNNtt", None)]
    assert class_name(path) == "sample.csvdump"


def _table_bytes(tmp_path, name: str, text: str) -> bytes:
    data = (text.replace(",", "\t") if ".tsv" in name.lower() else text).encode()
    if name.lower().endswith(".gz"):
        return gzip.compress(data)
    if name.lower().endswith(".bgz"):
        return _bgzf(tmp_path / "scratch.bgz", data).read_bytes()
    return data


@pytest.mark.parametrize("name", ["x.csv.gz", "X.CSV", "x.tsv", "x.tsv.bgz"])
def test_tables_plain_gzipped_tab_separated_and_upper_case(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_table_bytes(tmp_path, name, TABLE))
    assert _pairs(read_records(path)) == [("x", "ACGT", "oct4"), ("y", "GGCC", "mafk")]
    assert load_labelled(path).classes == ["mafk", "oct4"]
    # For predict, the label column is optional.
    path.write_bytes(_table_bytes(tmp_path, name, "sequence\nACGT\nGGCC\n"))
    assert _pairs(read_records(path)) == [("row2", "ACGT", None), ("row3", "GGCC", None)]


@pytest.mark.parametrize("name", ["peaks.bed", "PEAKS.BED", "peaks.bed.gz"])
def test_bed_files_need_the_genome_and_read_its_intervals(tmp_path, name):
    genome = tmp_path / "genome.fa"
    genome.write_text(GENOME)
    bed = tmp_path / name
    content = b"chr1\t0\t4\tp1\t0\t+\nchr1\t8\t12\tp2\t0\t-\n"
    bed.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    assert _pairs(read_records(bed, IndexedFasta(genome))) == [("p1", "ACGT", None), ("p2", "CCGT", None)]
    with pytest.raises(GenomicsDataError, match="BED file holds intervals") as error:
        read_records(bed)
    assert str(bed) in str(error.value) and "\n" not in str(error.value)


def test_fastq_gz_and_bgzf_and_upper_case_fasta(tmp_path):
    reads = tmp_path / "reads.fastq.gz"
    reads.write_bytes(gzip.compress(FASTQ))
    assert _pairs(read_records(reads)) == [("r1", "ACGTN", None), ("r2", "acg", None)]
    for name in ("genome.fa.bgz", "genome.fa.bgzf", "GENOME.FA.BGZ"):
        blocked = _bgzf(tmp_path / name, GENOME.encode())
        assert _pairs(read_records(blocked)) == [("chr1", "ACGTACGTACGGGGTTTTAA", None)]
        assert IndexedFasta(blocked).contig("chr1") == "ACGTACGTACGGGGTTTTAA"
        assert class_name(blocked) == name.split(".")[0]  # the class keeps the file name's case
    upper = tmp_path / "X.FA"
    upper.write_bytes(FASTA)
    assert [r.name for r in read_records(upper)] == ["s1", "s2"]


def test_files_without_a_known_suffix_are_sniffed_by_content(tmp_path):
    fasta, fastq = tmp_path / "reads", tmp_path / "reads.txt"
    fasta.write_bytes(FASTA)
    fastq.write_bytes(FASTQ)
    assert [r.name for r in read_records(fasta)] == ["s1", "s2"]
    assert [r.name for r in read_records(fastq)] == ["r1", "r2"]
    # A table under a non-table name is not guessed into a table: one line naming the file and line.
    mislabelled = tmp_path / "table.csv.txt"
    mislabelled.write_text(TABLE)
    with pytest.raises(GenomicsDataError) as error:
        read_records(mislabelled)
    assert str(error.value).startswith(f"{mislabelled}:1: not FASTA or FASTQ") and "\n" not in str(error.value)


def test_per_class_files_use_the_same_rule(tmp_path):
    positive, negative = tmp_path / "pos.csvdump.fa", tmp_path / "neg.fa.bgzf"
    positive.write_bytes(FASTA)
    _bgzf(negative, b">n\nCCCC\n")
    data = load_labelled([positive, negative])
    assert data.classes == ["neg", "pos.csvdump"]
    assert [(r.name, r.label) for r in data.records] == [("s1", "pos.csvdump"), ("s2", "pos.csvdump"), ("n", "neg")]
    table = tmp_path / "extra.tsv.gz"
    table.write_bytes(gzip.compress(TABLE.replace(",", "\t").encode()))
    with pytest.raises(GenomicsDataError, match="a table among per-class files"):
        load_labelled([positive, table])
    with pytest.raises(GenomicsDataError, match="one sequence file holds no labels"):
        load_labelled(positive)
