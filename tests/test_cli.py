"""The CLI: help, info, and user errors as one line (no traceback) with a non-zero exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mambakit.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambakit.cli", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_and_info(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "reference" in out and "text" in out
    # The cuda backend's compile times (first use, then the disk cache), where NVRTC loads.
    assert "cache hit (ms)" in out or "NVRTC: not loadable" in out


def test_unknown_domain_lists_the_known_ones():
    assert_one_line_error(run_cli("train", "chemistry"), "unknown domain 'chemistry'", "text")


def test_missing_data_file(tmp_path):
    assert_one_line_error(run_cli("train", "text", "--data", str(tmp_path / "nope.txt")), "nope.txt", "no such file")


def test_unknown_config_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 3\nlearning_rate: 0.1\n")
    assert_one_line_error(run_cli("train", "text", "--config", str(config)), "run.yaml", "learning_rate")


def test_unknown_model_key_in_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"model": {"d_modle": 8}}')
    assert_one_line_error(run_cli("train", "text", "--config", str(config)), "d_modle")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_but_absent():
    assert_one_line_error(run_cli("train", "text", "--device", "cuda"), "--device cuda", "no CUDA GPU")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("generate", "text", "--checkpoint", str(tmp_path / "run")), "no such checkpoint")


def test_config_file_with_model_and_train_sections_and_flag_override(tmp_path):
    import json

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: [{corpus}]\nmax_steps: 5\nbatch_size: 4\nmodel:\n  d_model: 16\n  n_layer: 1\n"
        "train:\n  eval_every: 1\n  log_every: 1\n"
    )
    out = tmp_path / "run"
    assert (
        main(["train", "text", "--config", str(config), "--max-steps", "2", "--out", str(out), "--seq-len", "32"]) == 0
    )
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["train"]["max_steps"] == 2 and resolved["train"]["batch_size"] == 4
    assert resolved["model"]["d_model"] == 16 and resolved["model"]["n_layer"] == 1
    assert resolved["options"]["data"] == [str(corpus)]
    assert (out / "last" / "trainer_state.pt").exists()


def test_bench_scan_times_the_usable_backends(capsys):
    assert (
        main(
            [
                "bench",
                "scan",
                "--batch",
                "1",
                "--dim",
                "8",
                "--d-state",
                "4",
                "--length",
                "16",
                "--repeats",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "torch" in out and "reference" in out


def test_out_of_range_settings_are_one_line_naming_them(tmp_path, capsys, monkeypatch):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bin")
    for arguments, message in (
        (["--seed", "-5"], "--seed must be an integer in 0..2^63-1"),
        (["--seed", str(2**64)], "--seed must be an integer in 0..2^63-1"),
        (["--lr", "1e300"], "lr must be a number in [0.0, 1e+30]"),
        (["--config", str(binary)], "binary.yaml: not a text config file (invalid UTF-8 at byte 0)"),
    ):
        assert main(["train", "genomics", *arguments, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err, arguments
    from mambakit import ops

    monkeypatch.setenv(ops.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown scan backend 'nope' \\(from MAMBAKIT_SCAN_BACKEND\\)"):
        ops.resolve_backend("auto", torch.device("cpu"))


def test_main_called_again_in_one_process_replaces_the_domain_commands(capsys):
    """A Python caller (and this suite) runs main many times: each call rebuilds the domain commands, not adds to
    them (they piled up before, and every call got slower than the one before)."""
    from mambakit import cli

    main(["train", "--help"])
    counts = len(cli.app.registered_groups), len(cli.bench_app.registered_commands)
    for _ in range(3):
        main(["train", "--help"])
    assert (len(cli.app.registered_groups), len(cli.bench_app.registered_commands)) == counts
    assert "genomics" in capsys.readouterr().out
