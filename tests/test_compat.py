"""Checkpoints written by commit 85bf326 (config version 1, before the open registry) still load, through the
library and the CLI, with identical outputs (tests/fixtures/v1/README.md says how they were made)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mambakit.cli import main
from mambakit.models import load_model, save_pretrained

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"
CHECKPOINTS = ["genomics_rc_classifier", "genomics_bimamba_mlm", "text_lm", "hf_import"]


def _outputs(model, expected: dict, name: str) -> torch.Tensor:
    mask = expected.get(f"{name}.attention_mask")
    with torch.no_grad():
        if mask is None:
            return model(expected[f"{name}.input_ids"]).logits
        return model(expected[f"{name}.input_ids"], attention_mask=mask).logits


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_version_1_checkpoints_give_identical_outputs_and_save_as_version_2(name, tmp_path):
    expected = load_file(V1 / "expected.safetensors")
    model = load_model(V1 / name)
    assert torch.equal(_outputs(model, expected, name), expected[f"{name}.logits"])
    save_pretrained(model, tmp_path / "v2")
    again = load_model(tmp_path / "v2")
    assert type(again) is type(model) and again.config == model.config
    assert torch.equal(_outputs(again, expected, name), expected[f"{name}.logits"])


def test_the_rc_classifier_becomes_a_genomics_config_with_its_classes():
    model = load_model(V1 / "genomics_rc_classifier")
    assert type(model.config).__name__ == "GenomicsMambaConfig" and model.config.rc_equivariant
    assert type(load_model(V1 / "text_lm").config).__name__ == "MambaConfig"


def test_cli_predict_and_eval_read_the_old_genomics_record(tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                "genomics",
                "-c",
                str(V1 / "genomics_rc_classifier"),
                "--data",
                str(V1 / "sample.fa"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_text() == (V1 / "genomics_rc_classifier.predictions.csv").read_text()
    assert (
        main(["eval", "genomics", "-c", str(V1 / "genomics_rc_classifier"), "--data", str(V1 / "sample.fa")]) != 0
    )  # unlabelled FASTA: nothing to score (a one-line error)
    capsys.readouterr()
    assert main(["eval", "genomics", "-c", str(V1 / "genomics_rc_classifier"), "--batch-size", "64"]) == 0
    assert "auroc" in capsys.readouterr().out


def test_cli_generates_the_same_text_from_the_old_text_checkpoint(tmp_path):
    checkpoint = tmp_path / "text_lm"
    shutil.copytree(V1 / "text_lm", checkpoint)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mambakit.cli",
            "generate",
            "text",
            "-c",
            str(checkpoint),
            "--prompt",
            "def f(x):",
            "--max-new-tokens",
            "40",
            "--temperature",
            "0",
        ],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (V1 / "text_lm.generated.txt").read_bytes()
