"""TrainConfig.cuda_graphs: a run whose steps replay a captured CUDA graph trains as the eager run does (on a GPU:
same losses and weights, through a change of batch shape and through a step that cannot be captured), and the
settings it cannot serve are one-line errors (on any machine)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mambakit.cli import main
from mambakit.errors import UserError
from mambakit.models import MambaConfig, MambaLMHeadModel, load_model
from mambakit.train import Task, TrainConfig, fit
from mambakit.train.step_graph import batch_signature

VOCAB = 32
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model() -> MambaLMHeadModel:
    torch.manual_seed(0)
    return MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=VOCAB))


def _examples(count: int = 64, length: int = 24) -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, VOCAB, (count, length), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in tokens]


def _config(out_dir: Path, **changes: object) -> TrainConfig:
    return TrainConfig(
        out_dir=out_dir, max_steps=12, batch_size=8, warmup_steps=2, eval_every=0, save_every=0, log_every=1
    ).replace(**changes)


def _losses(out_dir: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]


def test_the_settings_graphs_cannot_serve_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="cuda_graphs replays one micro-batch a step; set grad_accum_steps to 1"):
        _config(tmp_path, cuda_graphs=True, grad_accum_steps=2)
    with pytest.raises(UserError, match="must be true or false"):
        _config(tmp_path, cuda_graphs="yes")
    with pytest.raises(UserError, match=r"needs one process on a CUDA device, this run has 1 process on cpu"):
        fit(_model(), Task(), _examples(), config=_config(tmp_path / "run", cuda_graphs=True, device="cpu"))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    out = tmp_path / "cli"
    arguments = ["train", "synthetic", "--cuda-graphs", "--max-steps", "2", "--device", "cpu", "--out", str(out)]
    assert main(arguments) == 2
    assert "mambakit: error: cuda_graphs (--cuda-graphs) needs one process" in capsys.readouterr().err
    assert not out.exists()
    bench = ["bench", "capabilities", "--tier", "cpu", "--tasks", "mqar", "--models", "attention", "--cuda-graphs"]
    assert main([*bench, "--device", "cpu", "--out", str(tmp_path / "bench")]) == 2
    assert "needs one process on a CUDA device" in capsys.readouterr().err


def test_a_graph_is_specific_to_its_batch_shapes():
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "labels": torch.zeros(2, 8, dtype=torch.long)}
    assert batch_signature(batch) == batch_signature({k: v.clone() for k, v in reversed(batch.items())})
    assert batch_signature(batch) != batch_signature({**batch, "input_ids": torch.zeros(2, 9, dtype=torch.long)})
    assert batch_signature(batch) != batch_signature({**batch, "labels": batch["labels"].int()})


class _ReadsBackInTheLoss(Task):
    """A loss that looks at a value on the host: fine eagerly, not inside a CUDA graph capture."""

    def compute_loss(self, model, batch):
        loss = super().compute_loss(model, batch)
        if float(loss) < 0:  # never true: only the read-back matters
            raise AssertionError
        return loss


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_steps_train_as_eager_ones_through_a_shape_change(tmp_path, precision):
    # The sequence-length warm-up changes the batch shape at step 4 and 8: three captures, each while the loader's
    # pin-memory thread (loader workers on a GPU) may be allocating.
    changes = {
        "device": "cuda",
        "precision": precision,
        "seq_len_warmup": [[0, 8], [4, 16], [8, 24]],
        "num_workers": 2,
    }
    for graphs in (False, True):
        fit(_model(), Task(), _examples(), config=_config(tmp_path / f"graphs_{graphs}", cuda_graphs=graphs, **changes))
    eager, graphed = _losses(tmp_path / "graphs_False"), _losses(tmp_path / "graphs_True")
    assert len(eager) == len(graphed) == 12
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    assert eager == pytest.approx(graphed, rel=tolerance, abs=tolerance)
    weights = {graphs: load_model(tmp_path / f"graphs_{graphs}" / "last").state_dict() for graphs in (False, True)}
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=tolerance, atol=tolerance, msg=name)


@pytest.mark.gpu
@needs_cuda
def test_a_step_that_cannot_be_captured_trains_without_graphs(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        fit(_model(), _ReadsBackInTheLoss(), _examples(), config=_config(tmp_path, cuda_graphs=True, device="cuda"))
    assert "could not be captured as a CUDA graph" in caplog.text
    assert len(_losses(tmp_path)) == 12 and all(loss == loss for loss in _losses(tmp_path))
