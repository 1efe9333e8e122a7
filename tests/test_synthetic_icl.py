"""Park et al.'s in-context learning tasks (`synthetic --task icl-*`): the generators' invariants, the linear
regression curriculum, the least-squares and zero baselines, the CLI end to end with its one-line errors, a vector
MambaFormer checkpoint round trip, and a tiny model that learns linear regression in context."""

from __future__ import annotations

import json

import pytest
import torch
from mambakit.apps.synthetic import icl
from mambakit.apps.synthetic.cli import family_fields

from mambakit.cli import main
from mambakit.models import MambaConfig, MambaForVectorSequences, load_model, save_pretrained

TINY = ["--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--preset", "tiny"]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vector_model(in_features: int, out_features: int = 1, family: str = "mamba") -> MambaForVectorSequences:
    sizes = {"d_model": 16, "n_layer": 2, "d_state": 4, "attn_num_heads": 2, "vocab_size": 0}
    config = MambaConfig(**{**sizes, **family_fields(family, 2, 16)})
    return MambaForVectorSequences(config, in_features, out_features, scan_backend="torch")


def test_linear_regression_prompts_interleave_x_and_y():
    batch = icl.linear_regression(16, 7, 4, _generator())
    xs, w = batch["xs"], batch["w"]
    assert xs.shape == (16, 7, 4) and w.shape == (16, 4)
    ys = icl.regression_targets(xs, w)
    assert torch.allclose(ys, torch.einsum("bnd,bd->bn", xs, w), atol=1e-6)
    prompt = icl.interleaved_prompt(xs, ys)
    assert prompt.shape == (16, 14, 4)
    assert torch.equal(prompt[:, ::2], xs) and torch.equal(prompt[:, 1::2, 0], ys)
    assert (prompt[:, 1::2, 1:] == 0).all()
    assert torch.equal(xs, icl.linear_regression(16, 7, 4, _generator())["xs"])
    with pytest.raises(ValueError, match="points >= 1"):
        icl.linear_regression(1, 0, 4, _generator())


def test_sparse_parity_labels_are_the_product_of_exactly_k_chosen_bits():
    batch = icl.sparse_parity(32, 20, 10, 2, _generator())
    xs, coords = batch["xs"], batch["coords"]
    assert xs.shape == (32, 20, 10) and set(xs.unique().tolist()) == {-1.0, 1.0}
    assert (coords.sum(1) == 2).all() and set(coords.unique().tolist()) == {0.0, 1.0}
    ys = icl.parity_targets(xs, coords)
    for row in range(32):
        chosen = coords[row].nonzero().flatten()
        assert torch.equal(ys[row], xs[row][:, chosen].prod(-1))
    assert len({tuple(row.nonzero().flatten().tolist()) for row in coords}) > 5  # drawn per prompt
    with pytest.raises(ValueError, match="bits <= dims"):
        icl.sparse_parity(1, 4, 3, 4, _generator())


def test_vector_mqar_queries_copy_a_key_and_target_its_value():
    pairs, dims = 6, 8
    batch = icl.vector_mqar(64, pairs, dims, _generator())
    keys, values, query = batch["keys"], batch["values"], batch["query"]
    assert keys.shape == values.shape == (64, pairs, dims) and query.shape == (64,)
    assert torch.allclose(keys.norm(dim=-1), torch.full((64, pairs), dims**0.5))
    assert torch.allclose(values.norm(dim=-1), torch.full((64, pairs), dims**0.5))
    assert query.min() >= 0 and query.max() < pairs and len(query.unique()) == pairs
    prompt = icl.retrieval_prompt(keys, values, query)
    assert prompt.shape == (64, 2 * pairs + 1, dims)
    assert torch.equal(prompt[:, 0:-1:2], keys) and torch.equal(prompt[:, 1::2], values)
    # The query equals one key (the queried one, the only one of largest inner product) and the target is its value.
    assert torch.equal(prompt[:, -1], keys[torch.arange(64), query])
    assert torch.equal((keys @ prompt[:, -1].unsqueeze(-1)).squeeze(-1).argmax(1), query)
    model = _vector_model(dims, dims)
    with torch.no_grad():
        predictions, targets = icl.InContextTask(icl.VECTOR_MQAR).predict(model, batch)
    assert predictions.shape == (64, dims) and torch.equal(targets, values[torch.arange(64), query])


def test_curriculum_zeroes_dims_drops_points_and_reaches_the_full_size():
    task = icl.InContextTask(icl.LINEAR_REGRESSION, curriculum_every=10)
    batch = icl.linear_regression(8, 20, 9, _generator())
    for step, dims, points in [(0, 5, 11), (9, 5, 11), (10, 6, 13), (35, 8, 17), (40, 9, 19), (50, 9, 20)]:
        seen = task.curriculum(batch, step)
        assert seen["xs"].shape == (8, points, 9)
        assert (seen["xs"][..., dims:] == 0).all() and (seen["w"][:, dims:] == 0).all()
        assert torch.equal(seen["xs"][..., :dims], batch["xs"][:, :points, :dims])
        ys = icl.regression_targets(seen["xs"], seen["w"])
        assert torch.allclose(ys, torch.einsum("bnd,bd->bn", batch["xs"][:, :points, :dims], batch["w"][:, :dims]))
        assert task.count_tokens(seen) == 8 * 2 * points
    small = icl.linear_regression(2, 3, 2, _generator())  # smaller than the curriculum's start: full size at once
    assert torch.equal(task.curriculum(small, 0)["xs"], small["xs"])
    parity = icl.sparse_parity(2, 30, 10, 2, _generator())
    assert icl.InContextTask(icl.SPARSE_PARITY).curriculum(parity, 0) is parity


def test_least_squares_is_exact_past_d_points_and_the_zero_predictor_scores_one():
    dims, points = 5, 12
    batch = icl.linear_regression(512, points, dims, _generator())
    ys = icl.regression_targets(batch["xs"], batch["w"])
    predictions = icl.least_squares_predictions(batch["xs"], ys)
    assert (predictions[:, 0] == 0).all()
    assert ((predictions[:, dims:] - ys[:, dims:]) ** 2).max() < 1e-8
    assert ((predictions[:, 1:dims] - ys[:, 1:dims]) ** 2).mean() > 0.1  # underdetermined before d points
    with torch.no_grad():
        metrics = icl.InContextTask(icl.LINEAR_REGRESSION).evaluate(_vector_model(dims), [batch])
    assert metrics["zero_error"] == pytest.approx(1.0, abs=0.1)
    # Least squares: zero error on the points past d, (d - i) / d at point i before that.
    expected = sum((dims - i) / dims for i in range(dims)) / points
    assert metrics["least_squares_error"] == pytest.approx(expected, abs=0.05)
    assert metrics["loss"] == pytest.approx(metrics["error"] * dims)


@pytest.mark.parametrize(
    ("task", "flags", "metric"),
    [
        ("icl-linear-regression", ["--model", "mamba"], "least_squares_error"),
        ("icl-sparse-parity", ["--model", "transformer", "--positions", "learned", "--count", "6"], "accuracy"),
        ("icl-vector-mqar", ["--model", "mambaformer", "--vocab", "4", "--count", "3"], "accuracy"),
    ],
)
def test_train_then_eval(task, flags, metric, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "synthetic", "--task", task, *flags, "--out", str(out), *TINY]) == 0
    record = json.loads((out / "best" / "run_record.json").read_text())
    assert record["task"] == task and record["options"]["curriculum_every"] == 2000
    model = load_model(out / "best")
    assert isinstance(model, MambaForVectorSequences) and model.config.vocab_size == 0
    capsys.readouterr()
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--device", "cpu"]) == 0
    assert metric in capsys.readouterr().out
    assert main(["eval", "synthetic", "-c", str(out / "best"), "--lengths", "32,64"]) != 0
    error = capsys.readouterr().err.strip()
    assert "--length and --lengths do not apply" in error and len(error.splitlines()) == 1


def test_one_line_errors(tmp_path, capsys):
    for extra, message in [
        (["--data", str(tmp_path)], "drop --data"),
        (["--length", "64"], "set N with --count"),
    ]:
        command = ["train", "synthetic", "--task", "icl-linear-regression", "--out", str(tmp_path / "x"), *TINY]
        assert main([*command, *extra]) != 0
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1


def test_vector_mambaformer_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _vector_model(6, 6, family="mambaformer").eval()
    prompt = icl.retrieval_prompt(**icl.vector_mqar(2, 4, 6, _generator()))
    save_pretrained(model, tmp_path / "checkpoint")
    loaded = load_model(tmp_path / "checkpoint", scan_backend="torch")
    assert isinstance(loaded, MambaForVectorSequences) and (loaded.in_features, loaded.out_features) == (6, 6)
    assert list(loaded.config.attn_layer_idx) == [1]
    with torch.no_grad():
        assert torch.allclose(loaded(input_vectors=prompt).logits, model(input_vectors=prompt).logits, atol=1e-6)


def test_a_tiny_mamba_learns_linear_regression_in_context():
    torch.manual_seed(0)
    model = _vector_model(5)
    task = icl.InContextTask(icl.LINEAR_REGRESSION)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train, validation = _generator(1), icl.linear_regression(256, 11, 5, _generator(2))
    for _ in range(300):
        task.compute_loss(model, icl.linear_regression(32, 11, 5, train)).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        metrics = task.evaluate(model, [validation])
    assert metrics["error"] < 0.85 * metrics["zero_error"]
    assert metrics["least_squares_error"] < metrics["error"]
