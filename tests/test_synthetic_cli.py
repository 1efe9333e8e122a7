"""`mambakit train|eval synthetic` end to end on tiny runs: every task with the model families, evaluation at
another length, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from mambakit.apps.synthetic.cli import family_fields
from mambakit.apps.synthetic.data import TASKS, SyntheticTask, TaskShape, example_seed

from mambakit.cli import main
from mambakit.models import IGNORE_INDEX, MambaConfig, load_model
from mambakit.nn import CausalSelfAttention

TINY = ["--max-steps", "2", "--batch-size", "4", "--config"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    config = tmp_path_factory.mktemp("synthetic") / "model.yaml"
    config.write_text("model:\n  d_model: 16\n  n_layer: 2\n  d_state: 4\n  attn_num_heads: 2\n")
    return config


@pytest.mark.parametrize(
    ("task", "family"),
    [
        ("selective-copying", "mamba"),
        ("induction-heads", "mambaformer"),
        ("mqar", "transformer"),
        ("mqar-hard", "hybrid"),
        ("copying", "transformer"),
    ],
)
def test_train_then_eval_at_another_length(task, family, small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "synthetic", "--task", task, "--model", family, "--out", str(out), *TINY, str(small)]) == 0
    model = load_model(out / "best")
    expected = family_fields(family, 2, 16)
    attention = [i for i, layer in enumerate(model.backbone.layers) if isinstance(layer.mixer, CausalSelfAttention)]
    assert attention == expected.get("attn_layer_idx", [])
    record = json.loads((out / "best" / "run_record.json").read_text())
    assert record["domain"] == "synthetic" and record["task"] == task and record["options"]["family"] == family
    capsys.readouterr()
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--length", "96"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_examples_are_seeded_and_scored_where_the_task_says():
    shape = TASKS["induction-heads"][1]
    data = SyntheticTask("induction-heads", shape, seed=3, size=10)
    first = data[4]
    assert torch.equal(first["input_ids"], data[4]["input_ids"]) and first["input_ids"].shape == (shape.length,)
    assert not torch.equal(first["input_ids"], SyntheticTask("induction-heads", shape, seed=4, size=10)[4]["input_ids"])
    assert (first["targets"] != IGNORE_INDEX).sum() == 1
    validation = SyntheticTask("induction-heads", shape, seed=3, size=10, validation=True)[4]["input_ids"]
    assert not torch.equal(first["input_ids"], validation)
    seeds = {example_seed(0, i, False) for i in range(100_000)}
    assert len(seeds) > 99_990 and not seeds & {example_seed(0, i, True) for i in range(512)}
    with pytest.raises(ValueError, match="4 \\* pairs"):
        SyntheticTask("mqar", TaskShape(length=16, vocab=256, count=8), seed=0, size=1)


def test_families_and_errors(small, tmp_path, capsys):
    lti = MambaConfig(d_model=16, n_layer=2, **family_fields("mamba-lti", 2, 16))
    assert not lti.selective and not lti.attn_layer_idx
    mambaformer = family_fields("mambaformer", 4, 16)
    assert mambaformer["n_layer"] == 5 and mambaformer["attn_layer_idx"] == [1, 3]
    for extra, message in [
        (["--model", "rnn"], "--model 'rnn': choose one of"),
        (["--data", str(small)], "drop --data"),
        (["--task", "mqar", "--count", "40"], "4 * pairs <= length"),
    ]:
        assert main(["train", "synthetic", "--out", str(tmp_path / "x"), *extra, *TINY, str(small)]) != 0
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1


@pytest.mark.parametrize("family", ["mamba", "mambaformer"])
def test_chunked_evaluation_equals_one_pass(family, monkeypatch):
    from mambakit.apps.synthetic import tasks

    from mambakit.models import MambaLMHeadModel

    torch.manual_seed(0)
    config = MambaConfig(d_model=16, vocab_size=16, d_state=4, attn_num_heads=2, **family_fields(family, 2, 16))
    model = MambaLMHeadModel(config, scan_backend="torch").eval()
    data = SyntheticTask("induction-heads", TaskShape(length=50, vocab=16, count=1), seed=0, size=6)
    batch = {key: torch.stack([data[i][key] for i in range(6)]) for key in ("input_ids", "targets")}
    batch["targets"][:, 10:40:3] = batch["input_ids"][:, 11:41:3]  # more scored positions, across chunk borders
    with torch.no_grad():
        whole = tasks.ScoredTokensTask().evaluate(model, [batch])
        monkeypatch.setattr(tasks, "EVAL_CHUNK", 16)
        chunked = tasks.ScoredTokensTask().evaluate(model, [batch])
    assert chunked["accuracy"] == whole["accuracy"] and chunked["sequence_accuracy"] == whole["sequence_accuracy"]
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_eval_at_several_lengths(small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "synthetic", "--task", "induction-heads", "--out", str(out), *TINY, str(small)]) == 0
    capsys.readouterr()
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--lengths", "32,128"]) == 0
    printed = "".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "(length32)" in printed and "(length128)" in printed
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--lengths", "a,b"]) != 0
    assert "--lengths 'a,b'" in capsys.readouterr().err


def test_copying_evaluates_strings_of_exactly_each_length_and_model_settings_change_the_layout(tmp_path, capsys):
    config = tmp_path / "model.yaml"
    config.write_text("model:\n  d_model: 16\n  n_layer: 2\n  attn_num_heads: 2\n  d_intermediate: 0\n")
    out = tmp_path / "run"
    arguments = ["train", "synthetic", "--task", "copying", "--model", "transformer", "--positions", "learned"]
    assert main([*arguments, "--out", str(out), *TINY, str(config)]) == 0
    model = load_model(out / "best")
    # The config file's d_intermediate 0 wins over the family's MLP: attention-only layers.
    assert all(layer.mlp is None for layer in model.backbone.layers)
    assert model.backbone.position_embedding is not None
    capsys.readouterr()
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--lengths", "5,12", "--precision", "fp32"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "(length 5)" in printed and "(length 12)" in printed
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--precision", "fp8"]) == 2
    assert "--precision 'fp8': choose one of auto, fp32, bf16" in capsys.readouterr().err
