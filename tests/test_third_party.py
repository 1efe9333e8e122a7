"""A third party adds a domain and an architecture without touching mambakit: tests/third_party holds a package
(`mambakit_toy`: a bag-of-tokens classifier, its own config type, a domain with one task) and its dist-info with
a `mambakit.apps` entry point, as `pip install` would leave them. Once that folder is on the path, `fit` trains
the toy model, resumes it bit for bit, `save_pretrained`/`load_model` round-trip it, and the CLI trains and
evaluates it, all through the public API and the entry point."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambakit.domains import load_domains
from mambakit.models import list_architectures, load_model, save_pretrained
from mambakit.train import TrainConfig, fit
from mambakit.train.classification import ClassificationTask

THIRD_PARTY = Path(__file__).resolve().parent / "third_party"


@pytest.fixture
def toy(monkeypatch):
    """The installed toy package's module (imported as the entry point imports it)."""
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    importlib.invalidate_caches()
    assert "toy" in load_domains()  # imports the package, as the CLI does
    return sys.modules["mambakit_toy"]


def _config(out_dir: Path, **changes) -> TrainConfig:
    return TrainConfig(
        out_dir=out_dir, max_steps=8, batch_size=8, lr=1e-2, eval_every=4, save_every=4, log_every=1, **changes
    )


def _model(toy, seed: int):
    torch.manual_seed(seed)
    return toy.ToyBagClassifier(toy.ToyConfig())


def test_the_entry_point_registers_the_domain_and_architecture(toy):
    assert "toy" in load_domains()
    assert "ToyBagClassifier" in list_architectures("Toy*")


def test_fit_resumes_exactly_and_checkpoints_round_trip(toy, tmp_path):
    task = ClassificationTask(pad_token_id=0)
    examples = toy.toy_examples(48, seed=0)
    train, held_out = examples[:40], examples[40:]
    full = _model(toy, 0)
    completed = fit(full, task, train, held_out, config=_config(tmp_path / "full"))
    assert completed.status == "completed" and completed.step == 8

    def stop_at_step_3(info):
        if info.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = fit(_model(toy, 0), task, train, held_out, config=_config(tmp_path / "split"), callbacks=[stop_at_step_3])
    assert (stopped.status, stopped.step) == ("interrupted", 3)
    resumed = _model(toy, 99)  # other initial weights: everything must come from the checkpoint
    finished = fit(resumed, task, train, held_out, config=_config(tmp_path / "split", resume=True))
    assert finished.step == 8 and finished.metrics == completed.metrics
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name

    loaded = load_model(tmp_path / "split" / "last")
    assert type(loaded) is toy.ToyBagClassifier and loaded.config == full.config
    save_pretrained(loaded, tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    batch = task.collate(held_out)
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        assert torch.equal(full.eval()(**inputs).logits, again(**inputs).logits)


@pytest.mark.slow
def test_the_cli_trains_and_evaluates_the_toy_domain_and_load_model_finds_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(THIRD_PARTY), os.environ.get("PYTHONPATH", "")])}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)

    out = tmp_path / "run"
    trained = run(sys.executable, "-m", "mambakit.cli", "train", "toy", "--out", str(out), "--examples", "64")
    assert trained.returncode == 0, trained.stderr
    assert "accuracy" in trained.stdout
    evaluated = run(sys.executable, "-m", "mambakit.cli", "eval", "toy", "-c", str(out / "best"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "marker" in evaluated.stdout and "auroc" in evaluated.stdout
    # A fresh interpreter that never imports the toy package by name: the checkpoint's domain leads to it.
    loaded = run(
        sys.executable,
        "-c",
        f"from mambakit.models import load_model; print(type(load_model({str(out / 'last')!r})).__name__)",
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "ToyBagClassifier", loaded.stderr
    wrong = run(sys.executable, "-m", "mambakit.cli", "eval", "genomics", "-c", str(out / "last"))
    assert wrong.returncode != 0 and "a toy checkpoint, not a genomics checkpoint" in wrong.stderr
