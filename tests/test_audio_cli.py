"""`mambakit train|eval|generate|predict audio` end to end on tiny runs over the embedded spoken digits, and their
one-line errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

pytest.importorskip("soundfile", reason="the audio app reads and writes audio through soundfile")

from mambakit.apps.audio.data import embedded_dataset, mu_law_decode, read_audio, write_wav

from mambakit.cli import main

TINY = ["--crop", "512", "--batch-size", "8", "--max-steps", "3", "--config"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambakit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    config = folder / "model.yaml"
    config.write_text("model:\n  d_model: 8\n  n_layers: 1\n  d_state: 4\n  pools: [2, 2]\n")
    return folder, config


@pytest.fixture(scope="module")
def lm(small_model):
    folder, config = small_model
    out = folder / "lm"
    assert main(["train", "audio", "--out", str(out), *TINY, str(config)]) == 0
    return out


def test_train_lm_conditioned_then_generate_wavs_of_the_asked_length(lm, tmp_path, capsys):
    assert (lm / "best" / "run_record.json").exists()
    out = tmp_path / "wavs"
    assert (
        main(
            [
                "generate",
                "audio",
                "-c",
                str(lm / "best"),
                "--seconds",
                "0.05",
                "--n",
                "2",
                "--label",
                "7",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(out.glob("*.wav"))
    assert [f.name for f in files] == ["000_7.wav", "001_7.wav"]
    assert all(len(read_audio(f, 8000)) == 400 for f in files)
    assert "real time" in capsys.readouterr().out


def test_generate_without_a_checkpoint_uses_the_shipped_model(tmp_path, capsys):
    import soundfile

    out = tmp_path / "digits"
    assert main(["generate", "audio", "--seconds", "0.02", "--n", "2", "--label", "3", "--out", str(out)]) == 0
    files = sorted(out.glob("*.wav"))
    assert [f.name for f in files] == ["000_3.wav", "001_3.wav"]
    for file in files:
        info = soundfile.info(str(file))
        assert (info.samplerate, info.frames, info.channels) == (8000, 160, 1)
    assert "real time" in capsys.readouterr().out


def test_eval_reports_bits_per_sample(lm, capsys):
    assert main(["eval", "audio", "-c", str(lm / "best"), "--batch-size", "32"]) == 0
    assert "bits_per_sample" in capsys.readouterr().out


def test_classify_then_predict_a_folder_of_wavs(small_model, tmp_path):
    folder, config = small_model
    out = folder / "classify"
    assert main(["train", "audio", "--task", "classify", "--out", str(out), *TINY, str(config)]) == 0
    clips = tmp_path / "clips"
    clips.mkdir()
    data = embedded_dataset()
    for i in data.splits["test"][:6]:
        record = data.records[i]
        write_wav(clips / f"{record.label}_x_{i}.wav", mu_law_decode(record.audio), 8000)
    predictions = tmp_path / "p.csv"
    assert main(["predict", "audio", "-c", str(out / "best"), "--data", str(clips), "--out", str(predictions)]) == 0
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all(row["prediction"] in [str(d) for d in range(10)] for row in rows)


@pytest.mark.slow
def test_bad_inputs_are_one_line(lm, small_model, tmp_path):
    folder, config = small_model
    unconditional = folder / "uncond"
    assert main(["train", "audio", "--unconditional", "--out", str(unconditional), *TINY, str(config)]) == 0
    result = cli("generate", "audio", "-c", str(unconditional / "best"), "--label", "3", "--seconds", "0.01")
    assert result.returncode != 0 and "unconditional" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("generate", "audio", "-c", str(lm / "best"), "--label", "eleven", "--seconds", "0.01")
    assert result.returncode != 0 and "eleven" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wav")
    result = cli("generate", "audio", "-c", str(lm / "best"), "--prompt", str(broken), "--seconds", "0.01")
    assert result.returncode != 0 and "broken.wav" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("predict", "audio", "-c", str(lm / "best"), "--data", str(broken))
    assert result.returncode != 0 and "predicts no labels" in result.stderr
