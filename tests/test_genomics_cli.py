"""`mambakit train|eval|predict genomics` end to end on tiny runs, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mambakit.cli import main


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A classifier trained for a few steps on the embedded Oct4 vs Mafk task."""
    out = tmp_path_factory.mktemp("genomics") / "run"
    assert (
        main(["train", "genomics", "--out", str(out), "--max-steps", "3", "--batch-size", "8", "--seq-len", "64"]) == 0
    )
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambakit.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_checkpoints_and_config(classifier):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_record.json", "trainer_state.pt"):
        assert (classifier / "last" / name).exists(), name
    assert (classifier / "run_config.json").exists() and (classifier / "metrics.jsonl").exists()


def test_predict_labels_and_embeddings(classifier, tmp_path, capsys):
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">a\nACGTACGTTTGACAGG\n>b\nggccNNacgtRYacgt\n")
    predictions = tmp_path / "out.csv"
    assert (
        main(["predict", "genomics", "-c", str(classifier / "best"), "--data", str(fasta), "--out", str(predictions)])
        == 0
    )
    lines = predictions.read_text().splitlines()
    assert lines[0] == "name,prediction,p_mafk,p_oct4" and len(lines) == 3
    embeddings = tmp_path / "emb.npy"
    assert (
        main(
            [
                "predict",
                "genomics",
                "-c",
                str(classifier / "best"),
                "--data",
                str(fasta),
                "--embed",
                "--out",
                str(embeddings),
            ]
        )
        == 0
    )
    import numpy as np

    assert np.load(embeddings).shape == (2, 64)


def test_predict_with_unknown_labels_is_one_line(classifier, tmp_path):
    table = tmp_path / "labelled.csv"
    table.write_text("sequence,label\nACGTACGT,oct4\nACGTTTTT,ctcf\n")
    result = cli("predict", "genomics", "-c", str(classifier / "best"), "--data", str(table))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "labelled.csv" in result.stderr and "ctcf" in result.stderr


def test_malformed_fasta_and_other_domain_checkpoint(classifier, tmp_path):
    junk = tmp_path / "junk.fa"
    junk.write_bytes(b"\x00\x01\x02binary\xff\xfe")
    result = cli("train", "genomics", "--data", str(junk), "--max-steps", "1")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and "junk.fa" in result.stderr
    assert (
        main(
            [
                "train",
                "text",
                "--out",
                str(tmp_path / "text"),
                "--max-steps",
                "1",
                "--seq-len",
                "32",
                "--data",
                str(junk.with_name("notes.txt")),
            ]
        )
        != 0
    )  # missing file: one-line error, non-zero
    (tmp_path / "notes.txt").write_text("some text to learn from " * 50)
    assert (
        main(
            [
                "train",
                "text",
                "--out",
                str(tmp_path / "text"),
                "--max-steps",
                "1",
                "--seq-len",
                "32",
                "--data",
                str(tmp_path / "notes.txt"),
            ]
        )
        == 0
    )
    result = cli("predict", "genomics", "-c", str(tmp_path / "text" / "last"), "--data", str(junk))
    assert result.returncode != 0 and "not a genomics checkpoint" in result.stderr


def test_eval_on_the_embedded_test_split(classifier, capsys):
    assert main(["eval", "genomics", "-c", str(classifier / "best"), "--batch-size", "64"]) == 0
    assert "auroc" in capsys.readouterr().out


def test_predict_csv_round_trips_names_with_commas_and_quotes_and_reads_by_last_suffix(classifier, tmp_path):
    import csv

    names = ["chr1:100-200,+", 'say"hi",there', "plain"]  # a FASTA name ends at the first space
    fasta = tmp_path / "sample.csvdump.fa"  # FASTA, whatever ".csv" inside its name suggests
    fasta.write_text("".join(f">{name}\nACGTACGTTTGACAGGACGT\n" for name in names))
    predictions = tmp_path / "out.csv"
    assert (
        main(["predict", "genomics", "-c", str(classifier / "best"), "--data", str(fasta), "--out", str(predictions)])
        == 0
    )
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == names
    assert all(row["prediction"] in ("mafk", "oct4") for row in rows)
    assert all(abs(float(row["p_mafk"]) + float(row["p_oct4"]) - 1) < 1e-5 for row in rows)


def test_domain_options_come_from_the_config_file_too(tmp_path):
    import json

    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 1\nseq_len: 48\nrc_equivariant: true\nmodel:\n  d_model: 16\n  n_layer: 1\n")
    out = tmp_path / "run"
    assert main(["train", "genomics", "--config", str(config), "--out", str(out)]) == 0
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["domain_options"]["seq_len"] == 48 and resolved["domain_options"]["rc_equivariant"] is True
    record = json.loads((out / "last" / "run_record.json").read_text())
    assert record["domain"] == "genomics" and record["task"] == "classify" and record["options"]["seq_len"] == 48
    assert json.loads((out / "last" / "config.json").read_text())["model_type"] == "mambakit-genomics"
