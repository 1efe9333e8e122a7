"""From what a user passes (or nothing: the embedded real data) to train/val/test datasets for each task.

Embedded defaults (provenance in data/README.md):
    CLASSIFICATION_DATA   Oct4 vs Mafk ChIP-seq binding sites, 200 bp, one FASTA per class
    GENOME                Corynebacterium diphtheriae NCTC11397 chromosome, 2.46 Mbp
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mambakit.domains import Splits
from mambakit.splits import stratified_split

from .datasets import GenomeWindows, SequenceDataset, encode_genome
from .readers import (
    GenomicsDataError,
    LabelledData,
    Region,
    load_labelled,
    read_genome,
    read_split_bed,
    split_genome,
)
from .tokenizer import DNATokenizer

DATA_DIR = Path(__file__).resolve().with_name("data")
CLASSIFICATION_DATA = DATA_DIR / "oct4_vs_mafk"
#: Windows each evaluation of pretraining scores (validation, test) unless --eval-windows says otherwise: the
#: embedded genome's held-out parts fit, and a 50 Mbp genome's are sampled instead of scored whole.
DEFAULT_EVAL_WINDOWS = 128
GENOME = DATA_DIR / "genome" / "c_diphtheriae_NCTC11397.fna.gz"


def classification_splits(
    data: str | Path | Sequence[str | Path] | None = None,
    tokenizer: DNATokenizer | None = None,
    genome: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_length: int | None = None,
    rc_augment: bool = False,
) -> Splits:
    """Datasets for sequence classification, with the class names (index = class id) as `labels`.

    `data` as `readers.load_labelled` takes it (None: the embedded Oct4 vs Mafk task). The user's split is used
    when the data carries one; otherwise a seeded stratified split. `rc_augment` applies to training only.
    """
    tokenizer = tokenizer or DNATokenizer()
    labelled: LabelledData = load_labelled(CLASSIFICATION_DATA if data is None else data, genome)
    splits = labelled.splits or stratified_split([r.label for r in labelled.records], val_fraction, test_fraction, seed)

    def dataset(split: str, augment: bool = False) -> SequenceDataset | None:
        indices = splits.get(split)
        if not indices:
            return None
        records = [labelled.records[i] for i in indices]
        return SequenceDataset(records, tokenizer, labelled.classes, max_length, augment)

    return Splits(dataset("train", rc_augment), dataset("val"), dataset("test"), tuple(labelled.classes))


def pretraining_splits(
    genome: str | Path | None = None,
    tokenizer: DNATokenizer | None = None,
    window: int = 1024,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    splits_bed: str | Path | None = None,
    rc_augment: bool = False,
    eval_windows: int | None = DEFAULT_EVAL_WINDOWS,
) -> Splits:
    """Windows of `window` bases over a genome FASTA (None: the embedded C. diphtheriae chromosome) for causal
    or masked LM pretraining, split by contig (or by region within contigs, see `readers.split_genome`), or by
    a BED file whose 4th column names each interval's split. `rc_augment` applies to training only. Validation
    and test keep at most `eval_windows` windows each (None: all), evenly spread over their regions, so each
    evaluation costs the same whatever the genome's size."""
    tokenizer = tokenizer or DNATokenizer()
    path = Path(GENOME if genome is None else genome)
    contigs = encode_genome(read_genome(path), tokenizer)
    if splits_bed is not None:
        regions = read_split_bed(splits_bed)
        for split_regions in regions.values():
            for region in split_regions:
                if region.contig not in contigs:
                    raise GenomicsDataError(f"{splits_bed}: contig {region.contig!r} is not in {path}")
    else:
        regions = split_genome({name: len(ids) for name, ids in contigs.items()}, val_fraction, test_fraction, seed)

    def windows(split: str, augment: bool = False, most: int | None = None) -> GenomeWindows | None:
        chosen: list[Region] = regions.get(split, [])
        if not chosen:
            return None
        return GenomeWindows(contigs, chosen, window, tokenizer=tokenizer, rc_augment=augment, max_windows=most)

    return Splits(windows("train", rc_augment), windows("val", most=eval_windows), windows("test", most=eval_windows))
