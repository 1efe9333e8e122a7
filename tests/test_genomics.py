"""Genomics app: tokenizer layout and round trips; reverse-complement equivariance (< 1e-5) and padding
invariance of bidirectional and RC-equivariant models; readers that survive real-world FASTA quirks and give
one-line errors naming the file (and line) for bad input; reproducible splits; the tasks' batches and metrics;
a short training run on the embedded data."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from mambakit.apps.genomics.datasets import GenomeWindows, SequenceDataset, encode_genome
from mambakit.apps.genomics.models import GenomicsMambaConfig, create_model, genomics_config
from mambakit.apps.genomics.predict import embed, predict_logits, save_embeddings
from mambakit.apps.genomics.prepare import (
    CLASSIFICATION_DATA,
    GENOME,
    classification_splits,
    pretraining_splits,
)
from mambakit.apps.genomics.rc import complement_table, reverse_complement_ids
from mambakit.apps.genomics.readers import (
    GenomicsDataError,
    IndexedFasta,
    Region,
    SequenceRecord,
    encode_labels,
    load_labelled,
    read_bed,
    read_sequences,
    read_table,
    split_genome,
)
from mambakit.apps.genomics.tasks import ClassifyTask, MlmTask, PretrainTask
from mambakit.apps.genomics.tokenizer import DNATokenizer

from mambakit.models import (
    IGNORE_INDEX,
    MambaConfig,
    MambaForMaskedLM,
    MambaForSequenceClassification,
    MambaLMHeadModel,
    load_model,
    save_pretrained,
)
from mambakit.nn import padded_reverse_index, reverse_padded
from mambakit.splits import stratified_split
from mambakit.train.classification import accuracy, auroc, matthews_corrcoef

# The app imports biopython only where it reads files; without it these tests have nothing to test.
pytest.importorskip("Bio", reason="the genomics app reads files through biopython (pip install mambakit[genomics])")

TOKENIZER = DNATokenizer()
#: Backbone variants that must all respect padding; the RC-equivariant ones must also be equivariant.
VARIANTS = {
    "causal": {},
    "bimamba-add-tied": {"bidirectional": True},
    "bimamba-multiply-untied": {
        "bidirectional": True,
        "bidirectional_strategy": "ew_multiply",
        "bidirectional_weight_tie": False,
    },
    "rc": {"rc_equivariant": True},
    "rc-bimamba": {"rc_equivariant": True, "bidirectional": True},
}
RC_VARIANTS = [name for name, options in VARIANTS.items() if options.get("rc_equivariant")]


def _config(**options: object) -> MambaConfig:
    return genomics_config(TOKENIZER, d_model=16, n_layer=2, d_state=4, **options)


def _padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bases (A, C, G, T, N) right-padded with [PAD]."""
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.randint(7, 12, (len(lengths), length), generator=generator)
    mask = (torch.arange(length) < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, TOKENIZER.pad_token_id), mask


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_ids_follow_the_caduceus_hyenadna_layout():
    expected = {
        "[CLS]": 0,
        "[SEP]": 1,
        "[BOS]": 2,
        "[MASK]": 3,
        "[PAD]": 4,
        "[RESERVED]": 5,
        "[UNK]": 6,
        "A": 7,
        "C": 8,
        "G": 9,
        "T": 10,
        "N": 11,
    }
    assert TOKENIZER.vocab == expected and TOKENIZER.vocab_size == 12
    assert TOKENIZER.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert TOKENIZER.encode("acgtn").tolist() == [7, 8, 9, 10, 11]  # uppercased
    assert TOKENIZER.encode("RYSWKMBDHV").tolist() == [11] * 10  # IUPAC ambiguity codes are N
    assert TOKENIZER.encode("u").tolist() == [10]  # RNA's U reads as T
    assert TOKENIZER.encode("X-é").tolist() == [6, 6, 6]  # anything else is [UNK]
    assert TOKENIZER.complement_map == (0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11)
    assert (TOKENIZER.pad_token_id, TOKENIZER.mask_token_id) == (4, 3)


def test_tokenizer_round_trips_and_complements():
    sequence = "ACGTTGCAnNACgt"
    assert TOKENIZER.decode(TOKENIZER.encode(sequence)) == sequence.upper()
    assert TOKENIZER.decode(TOKENIZER.encode("ACRYN")) == "ACNNN"
    assert TOKENIZER.reverse_complement("AACGTN") == "NACGTT"
    ids = TOKENIZER.encode("GATTACA")
    assert TOKENIZER.reverse_complement_ids(TOKENIZER.reverse_complement_ids(ids)).tolist() == ids.tolist()
    assert TOKENIZER.first_invalid("ACGTRYN") == -1 and TOKENIZER.first_invalid("ACG*T") == 3
    restored = DNATokenizer.from_json(TOKENIZER.to_json())
    assert restored.vocab == TOKENIZER.vocab and restored.complement_map == TOKENIZER.complement_map
    with pytest.raises(ValueError, match="is this a genomics checkpoint") as error:
        DNATokenizer.from_json('{"type": "byte-level"}', source="ckpt/tokenizer.json")
    _one_line(error, "ckpt/tokenizer.json")


# --- models: RC equivariance, padding ------------------------------------------------------------------------


def _rc_logits(model: MambaForMaskedLM, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's per-position logits on the reverse complements, and the RC-mapped logits on the inputs."""
    complement = complement_table(TOKENIZER.complement_map, 12)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        on_rc = model(reverse_complement_ids(ids, complement, mask), attention_mask=mask).logits
    rc_mapped = reverse_padded(logits[..., complement], padded_reverse_index(mask))
    keep = mask[..., None].bool()
    return on_rc.masked_select(keep), rc_mapped.masked_select(keep), logits.masked_select(keep)


@pytest.mark.parametrize("variant", RC_VARIANTS)
def test_rc_equivariant_output_on_the_reverse_complement_is_the_rc_mapped_output(variant):
    torch.manual_seed(0)
    ids, mask = _padded_batch([31, 24, 9])
    model = MambaForMaskedLM(_config(**VARIANTS[variant])).eval()
    on_rc, rc_mapped, logits = _rc_logits(model, ids, mask)
    assert (on_rc - rc_mapped).abs().max() < 1e-5
    # Not trivially so: without the complement, a reversal is a different input with different outputs.
    with torch.no_grad():
        reversed_only = model(reverse_padded(ids, padded_reverse_index(mask)), attention_mask=mask).logits
    assert (reversed_only.masked_select(mask[..., None].bool()) - rc_mapped).abs().max() > 1e-3
    classifier = MambaForSequenceClassification(_config(**VARIANTS[variant]), num_labels=3, pooling="last").eval()
    complement = complement_table(TOKENIZER.complement_map, 12)
    with torch.no_grad():
        forward = classifier(ids, attention_mask=mask).logits
        reverse = classifier(reverse_complement_ids(ids, complement, mask), attention_mask=mask).logits
    assert (forward - reverse).abs().max() < 1e-5  # an RC-invariant classifier


def test_a_plain_model_is_not_rc_equivariant_but_conjoining_makes_it_invariant():
    torch.manual_seed(0)
    ids, mask = _padded_batch([20, 13])
    model = MambaForSequenceClassification(_config(bidirectional=True), num_labels=2).eval()
    complement = complement_table(TOKENIZER.complement_map, 12)
    rc = reverse_complement_ids(ids, complement, mask)
    task = ClassifyTask(TOKENIZER, conjoin=True)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits, model(rc, attention_mask=mask).logits
        conjoined = (
            task.evaluate_logits(model, {"input_ids": ids, "attention_mask": mask}),
            task.evaluate_logits(model, {"input_ids": rc, "attention_mask": mask}),
        )
    assert (plain[0] - plain[1]).abs().max() > 1e-4
    assert (conjoined[0] - conjoined[1]).abs().max() < 1e-6


@pytest.mark.parametrize("pooling", ["mean", "last", "cls", "max"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_does_not_change_pooled_outputs_of_the_real_tokens(variant, pooling):
    torch.manual_seed(0)
    lengths = [17, 6, 11]
    ids, mask = _padded_batch(lengths, seed=1)
    model = MambaForSequenceClassification(_config(**VARIANTS[variant]), num_labels=2, pooling=pooling).eval()
    with torch.no_grad():
        padded = model.forward_head(model.forward_features(ids, attention_mask=mask), mask, pre_logits=True)
        alone = torch.cat(
            [
                model.forward_head(model.forward_features(ids[i : i + 1, :n]), pre_logits=True)
                for i, n in enumerate(lengths)
            ]
        )
    assert (padded - alone).abs().max() < 1e-5


def test_non_causal_models_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="MambaForMaskedLM"):
        MambaLMHeadModel(_config(bidirectional=True))
    with pytest.raises(ValueError, match="task mlm"):
        create_model("pretrain", _config(rc_equivariant=True))
    with pytest.raises(ValueError, match="no recurrent state"):
        MambaForMaskedLM(_config(bidirectional=True)).allocate_state(1)
    ids, mask = _padded_batch([5, 3])
    with pytest.raises(ValueError, match="right padding"):
        MambaForMaskedLM(_config(bidirectional=True))(ids, attention_mask=mask.flip(1))
    with pytest.raises(ValueError, match="complement_map"):
        GenomicsMambaConfig(d_model=8, n_layer=1, vocab_size=12, rc_equivariant=True)
    with pytest.raises(ValueError, match="own inverse"):
        GenomicsMambaConfig(d_model=8, n_layer=1, vocab_size=3, complement_map=[1, 2, 0])
    with pytest.raises(ValueError, match="bidirectional_strategy"):
        MambaConfig(d_model=8, n_layer=1, bidirectional=True, bidirectional_strategy="concat")


def test_bimamba_ties_projections_and_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    config = _config(bidirectional=True, rc_equivariant=True)
    assert GenomicsMambaConfig.from_dict(json.loads(config.to_json())) == config
    model = MambaForSequenceClassification(config, num_labels=2).eval()
    mixer = model.backbone.layers[0].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    assert mixer.mamba_rev.conv1d.weight is not mixer.mamba_fwd.conv1d.weight
    untied = MambaForSequenceClassification(_config(bidirectional=True, bidirectional_weight_tie=False))
    assert sum(p.numel() for p in untied.parameters()) > sum(
        p.numel() for p in MambaForSequenceClassification(_config(bidirectional=True)).parameters()
    )
    save_pretrained(model, tmp_path / "ckpt", extra_files={"tokenizer.json": TOKENIZER.to_json()})
    loaded = load_model(tmp_path / "ckpt")
    assert DNATokenizer.from_json((tmp_path / "ckpt" / "tokenizer.json").read_text()).vocab == TOKENIZER.vocab
    ids, mask = _padded_batch([12, 7])
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, loaded(ids, attention_mask=mask).logits)


def test_gradient_checkpointing_gives_the_same_gradients_for_a_non_causal_model():
    ids, mask = _padded_batch([14, 9])
    labels = torch.tensor([0, 1])
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = MambaForSequenceClassification(_config(bidirectional=True, rc_equivariant=True)).train()
        model.set_grad_checkpointing(checkpointing)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(gradients[0], gradients[1])


# --- readers ------------------------------------------------------------------------------------------------


def test_fasta_quirks_lowercase_n_runs_iupac_crlf_and_empty_records(tmp_path):
    path = tmp_path / "quirks.fa"
    path.write_bytes(b">seq1 soft-masked\r\nACGTacgt\r\nNNNNNNNN\r\n\r\n>empty\r\n>seq2\r\nRYKMswbdhvN\r\n>seq3\r\nGG")
    with pytest.warns(UserWarning, match="skipped 1 record"):
        records = read_sequences(path)
    assert [r.name for r in records] == ["seq1", "seq2", "seq3"]
    assert records[0].sequence == "ACGTacgtNNNNNNNN"  # CRLF and the blank line gone, case kept until tokenizing
    assert TOKENIZER.decode(TOKENIZER.encode(records[0].sequence)) == "ACGTACGTNNNNNNNN"
    assert TOKENIZER.decode(TOKENIZER.encode(records[1].sequence)) == "N" * 11
    gzipped = tmp_path / "quirks.fasta.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.warns(UserWarning):
        assert read_sequences(gzipped) == [
            SequenceRecord(r.name, r.sequence, None, f"{gzipped} (record {r.name})") for r in records
        ]
    fastq = tmp_path / "reads.fq"
    fastq.write_text("@r1\nACGTN\n+\nIIIII\n@r2\nacg\n+\n@@@\n")
    assert [(r.name, r.sequence) for r in read_sequences(fastq)] == [("r1", "ACGTN"), ("r2", "acg")]


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"hello world\nthis is not FASTA\n", "notes.fa", ":1: not FASTA or FASTQ"),
        (bytes(range(128, 256)) * 3, "junk.fa", "not a text file"),
        (gzip.compress(b">a\nACGT\n" * 200)[:40], "cut.fa.gz", "truncated or corrupt gzip"),
        (b">a\nACGT\nAC*T\n", "star.fa", ":3: record 'a' holds '*'"),
        (b"@r1\nACGT\n+\nII\n", "short.fq", "malformed FASTQ"),
    ],
    ids=["not-fasta", "binary-junk", "truncated-gzip", "bad-character", "bad-fastq"],
)
def test_malformed_sequence_files_give_one_line_naming_the_file(tmp_path, content, name, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GenomicsDataError) as error:
        read_sequences(path)
    _one_line(error, str(path), expected)


def test_missing_file_and_tables_without_a_label_column(tmp_path):
    with pytest.raises(GenomicsDataError) as error:
        read_sequences(tmp_path / "absent.fa")
    _one_line(error, str(tmp_path / "absent.fa"), "no such file")
    with pytest.raises(GenomicsDataError) as error:
        load_labelled(tmp_path / "absent.csv")
    _one_line(error, "absent.csv", "no such file")
    table = tmp_path / "data.csv"
    table.write_text("sequence,target\nACGT,1\n")
    with pytest.raises(GenomicsDataError) as error:
        load_labelled(table)
    _one_line(error, f"{table}:1:", "no 'label' column")
    table.write_text("sequence,label\nACGT,a\nAC GT,b\n")
    with pytest.raises(GenomicsDataError) as error:
        read_table(table)
    _one_line(error, f"{table}:3:", "' '")


def test_unknown_labels_at_predict_time_name_the_file_and_line(tmp_path):
    table = tmp_path / "predict.tsv"
    table.write_text("name\tsequence\tlabel\nx\tACGT\toct4\ny\tGGCC\tctcf\n")
    records = read_table(table)
    with pytest.raises(GenomicsDataError) as error:
        SequenceDataset(records, TOKENIZER, classes=["mafk", "oct4"])
    _one_line(error, f"{table}:3:", "'ctcf'", "mafk")
    assert encode_labels(records[:1], ["mafk", "oct4"]).tolist() == [1]
    assert read_table(table, require_label=False)[1].name == "y"


def test_labelled_inputs_tables_class_files_and_user_splits(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "folds" / split).mkdir(parents=True)
        (tmp_path / "folds" / split / "pos.fa").write_text(">p\nACGT\n>q\nAAAA\n")
        (tmp_path / "folds" / split / "neg.fasta.gz").write_bytes(gzip.compress(b">n\nCCCC\n"))
    data = load_labelled(tmp_path / "folds")
    assert data.classes == ["neg", "pos"] and data.splits == {"test": [3, 4, 5], "train": [0, 1, 2]}
    data = load_labelled([tmp_path / "folds" / "train" / "pos.fa", tmp_path / "folds" / "train" / "neg.fasta.gz"])
    assert [r.label for r in data.records] == ["pos", "pos", "neg"] and data.splits is None
    table = tmp_path / "t.csv"
    table.write_text("sequence,label,split\nACGT,a,train\nCCGG,b,train\nTTTT,a,valid\n")
    assert load_labelled(table).splits == {"train": [0, 1], "val": [2]}
    with pytest.raises(GenomicsDataError) as error:
        load_labelled(tmp_path / "folds" / "train" / "pos.fa")
    _one_line(error, "pos.fa", "one FASTA file per class")


def test_bed_intervals_over_an_indexed_fasta(tmp_path):
    from Bio import bgzf

    genome = ">chr1 first\nACGTACGTAC\nGGGGTTTTAA\n>chr2\nNNNNcccc\n"
    plain = tmp_path / "genome.fa"
    plain.write_text(genome)
    blocked = tmp_path / "genome.fa.gz"
    with bgzf.BgzfWriter(str(blocked), "wb") as handle:
        handle.write(genome.encode())
    bed = tmp_path / "peaks.bed"
    bed.write_text("track name=peaks\nchr1\t8\t12\tp1\t0\t+\nchr1\t0\t4\tp2\t0\t-\nchr2\t2\t6\n")
    for path in (plain, blocked):
        records = read_bed(bed, IndexedFasta(path), label_column=None)
        assert [(r.name, r.sequence) for r in records] == [("p1", "ACGG"), ("p2", "ACGT"), ("chr2:2-6", "NNcc")]
        assert records[0].source == f"{bed}:2"
    bed.write_text("chr1\t5\t30\n")
    with pytest.raises(GenomicsDataError) as error:
        read_bed(bed, IndexedFasta(plain))
    _one_line(error, f"{bed}:1:", "past the contig's length 20")
    bed.write_text("chrZ\t1\t3\n")
    with pytest.raises(GenomicsDataError) as error:
        read_bed(bed, IndexedFasta(plain))
    _one_line(error, f"{bed}:1:", "'chrZ'")


def test_splits_are_reproducible_stratified_and_by_contig():
    labels = ["a"] * 50 + ["b"] * 30
    first, again = stratified_split(labels, seed=3), stratified_split(labels, seed=3)
    assert first == again and first != stratified_split(labels, seed=4)
    assert sorted(first["train"] + first["val"] + first["test"]) == list(range(80))
    assert [labels[i] for i in first["test"]].count("a") == 5 and len(first["test"]) == 8
    chromosomes = {f"chr{i}": 1000 + i for i in range(1, 23)}
    by_contig = split_genome(chromosomes, seed=1)
    assert by_contig == split_genome(chromosomes, seed=1)
    assert all(
        region.start == 0 and region.end == chromosomes[region.contig]
        for regions in by_contig.values()
        for region in regions
    )
    assert {r.contig for r in by_contig["test"]}.isdisjoint(r.contig for r in by_contig["train"])
    single = split_genome({"chrom": 1000})
    assert single == {
        "train": [Region("chrom", 0, 900)],
        "val": [Region("chrom", 900, 950)],
        "test": [Region("chrom", 950, 1000)],
    }


# --- datasets and tasks -------------------------------------------------------------------------------------


def test_classification_batches_and_rc_augmentation():
    records = [SequenceRecord("x", "ACGTTT", "b"), SequenceRecord("y", "GG", "a")]
    batch = ClassifyTask(TOKENIZER).collate(list(SequenceDataset(records, TOKENIZER, ["a", "b"])))
    assert batch["input_ids"].tolist() == [[7, 8, 9, 10, 10, 10], [9, 9, 4, 4, 4, 4]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]] and batch["labels"].tolist() == [1, 0]
    augmented = SequenceDataset(records[:1], TOKENIZER, rc_augment=True)
    torch.manual_seed(0)
    seen = {TOKENIZER.decode(augmented[0]["input_ids"]) for _ in range(20)}
    assert seen == {"ACGTTT", "AAACGT"}


def test_genome_windows_and_the_causal_lm_batch():
    contigs = encode_genome([SequenceRecord("c", "ACGTACGTAC")], TOKENIZER)
    windows = GenomeWindows(contigs, [Region("c", 0, 10)], window=4)
    assert [TOKENIZER.decode(w["input_ids"]) for w in windows] == ["ACGT", "ACGT", "AC"]
    assert len(GenomeWindows(contigs, [Region("c", 0, 9)], window=4)) == 2  # a 1-base tail predicts nothing
    batch = PretrainTask(TOKENIZER).collate([windows[0], windows[2]])
    assert batch["labels"].tolist() == [[7, 8, 9, 10], [7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert set(batch) == {"input_ids", "labels"}


def test_mlm_masks_15_percent_80_10_10():
    task = MlmTask(TOKENIZER)
    examples = [{"input_ids": torch.full((500,), 9)} for _ in range(40)]
    examples[0] = {"input_ids": torch.full((100,), 9)}  # padded: padding is never a target
    torch.manual_seed(0)
    batch = task.collate(examples)
    targets = batch["labels"] != IGNORE_INDEX
    assert not targets[0, 100:].any()
    assert abs(targets.sum() / batch["attention_mask"].sum() - 0.15) < 0.01
    replaced = batch["input_ids"][targets]
    assert abs((replaced == TOKENIZER.mask_token_id).float().mean() - 0.8) < 0.03
    assert abs((replaced == 9).float().mean() - 0.1 - 0.1 / 4) < 0.03  # kept, or "replaced" by itself
    assert (batch["labels"][targets] == 9).all()
    cropped = task.crop(task.collate([{"input_ids": torch.full((50,), 8)}]), 1)
    assert (cropped["labels"] != IGNORE_INDEX).any()  # never a batch without a target (a NaN loss)


def test_metrics_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.8, 0.9])
    probabilities = np.stack([1 - scores, scores], 1)
    assert math.isclose(auroc(labels, probabilities), (2 + 1.5 + 2) / 6)  # the tie counts one half
    predictions = np.array([0, 1, 1, 1, 0])
    assert accuracy(labels, predictions) == 0.6
    tp, tn, fp, fn = 2, 1, 1, 1
    phi = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert math.isclose(matthews_corrcoef(labels, predictions, 2), phi)
    three = np.eye(3)[[0, 1, 2, 0]]
    assert (
        auroc(np.array([0, 1, 2, 0]), three) == 1.0
        and matthews_corrcoef(np.array([0, 1, 2]), np.array([0, 1, 2]), 3) == 1.0
    )


# --- embedded data, training, prediction --------------------------------------------------------------------


def test_embedded_data_is_real_and_split_reproducibly():
    assert (CLASSIFICATION_DATA.parent / "README.md").is_file()
    splits = classification_splits(seed=0)
    assert splits.labels == ("mafk", "oct4")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6397, 800, 800)
    assert {len(ids) for ids in splits.test.ids} == {200}
    genome = read_sequences(GENOME)
    assert [(r.name, len(r.sequence)) for r in genome] == [("NZ_LN831026.1", 2_463_666)]
    windows = pretraining_splits(window=4096)
    assert windows.test.num_bases == round(2_463_666 * 0.05) and len(windows.val) == 31


def test_short_training_run_then_predict_and_embed(tmp_path):
    from mambakit.train import TrainConfig, evaluate, fit

    splits = classification_splits(seed=0, rc_augment=True)
    classes = list(splits.labels)
    train = torch.utils.data.Subset(splits.train, range(48))
    records = [
        SequenceRecord(str(i), TOKENIZER.decode(splits.test.ids[i]), classes[splits.test.labels[i]]) for i in range(16)
    ]
    test = SequenceDataset(records, TOKENIZER, classes)
    torch.manual_seed(0)
    model = create_model("classify", _config(rc_equivariant=True), num_labels=2)
    task = ClassifyTask(TOKENIZER)
    config = TrainConfig(
        out_dir=tmp_path / "run",
        max_steps=3,
        batch_size=16,
        lr=3e-3,
        eval_every=0,
        save_every=0,
        seq_len_warmup=((0, 64), (2, 200)),
    )
    result = fit(model, task, train, test, config=config, extra_files={"tokenizer.json": TOKENIZER.to_json()})
    assert result.status == "completed" and set(result.metrics) >= {"accuracy", "mcc", "auroc", "loss"}
    loaded = load_model(tmp_path / "run" / "last")
    metrics = evaluate(loaded, task, test, TrainConfig(out_dir=tmp_path, max_steps=1, batch_size=8))
    assert math.isclose(metrics["accuracy"], result.metrics["accuracy"])
    logits = predict_logits(loaded, test, batch_size=5, conjoin=True)
    assert logits.shape == (16, 2) and np.allclose(logits, predict_logits(loaded, test, batch_size=16), atol=1e-5)
    vectors = embed(loaded, test, batch_size=7)
    assert vectors.shape == (16, 16)
    assert np.load(save_embeddings(tmp_path / "e.npy", vectors, test.names)).shape == (16, 16)
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq

        table = pq.read_table(save_embeddings(tmp_path / "e.parquet", vectors, test.names))
        assert table.column_names[:2] == ["name", "e0"] and table.num_rows == 16


def test_pretrain_and_mlm_tasks_train_a_step(tmp_path):
    from mambakit.train import TrainConfig, fit

    contigs = encode_genome([SequenceRecord("c", "ACGT" * 200)], TOKENIZER)
    windows = GenomeWindows(contigs, [Region("c", 0, 800)], window=64, tokenizer=TOKENIZER, rc_augment=True)
    for task, model, primary in (
        (PretrainTask(TOKENIZER), create_model("pretrain", _config()), "bits_per_base"),
        (MlmTask(TOKENIZER), create_model("mlm", _config(bidirectional=True)), "bits_per_base"),
    ):
        config = TrainConfig(
            out_dir=tmp_path / type(task).__name__, max_steps=2, batch_size=4, eval_every=0, save_every=0
        )
        result = fit(model, task, windows, windows, config=config)
        assert task.primary_metric == primary and math.isfinite(result.metrics[primary])
