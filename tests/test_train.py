"""The trainer: a run stopped by a real SIGTERM and resumed ends bit-identical to an uninterrupted one,
interruption and divergence leave good checkpoints, two torchrun processes (gloo) agree, and the pieces:
AdamW groups, the LR schedule, gradient accumulation, data workers, sequence-length warm-up, config errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from mambakit.models import IGNORE_INDEX, MambaConfig, MambaLMHeadModel, load_model
from mambakit.train import StepInfo, Task, TrainConfig, TrainingDiverged, evaluate, fit, parameter_groups
from mambakit.train import checkpointing as checkpointing_module

sys.path.insert(0, str(Path(__file__).parent))
from distributed_train import free_port, parameter_digest

ROOT = Path(__file__).resolve().parent.parent
VOCAB, LENGTH = 32, 12


def _model(seed: int = 0, **changes: object) -> MambaLMHeadModel:
    torch.manual_seed(seed)
    return MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=VOCAB).replace(**changes))


def _examples(count: int, seed: int = 1, length: int = LENGTH) -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, VOCAB, (count, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row} for row in tokens]


class _Stream(IterableDataset):
    """A streaming view of a list of examples."""

    def __init__(self, examples: list[dict[str, torch.Tensor]]) -> None:
        self.examples = examples

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.examples)


def _config(out_dir: Path, **changes: object) -> TrainConfig:
    # 26 examples, 8 per step: 3 steps an epoch (2 examples left over), so 8 steps cross two epoch ends.
    return TrainConfig(
        out_dir=out_dir,
        max_steps=8,
        batch_size=4,
        grad_accum_steps=2,
        warmup_steps=2,
        save_every=3,
        eval_every=4,
        log_every=1,
    ).replace(**changes)


def _send_at(step: int, signum: signal.Signals):
    def callback(info: StepInfo) -> None:
        if info.step == step:
            os.kill(os.getpid(), signum)

    return callback


def _assert_same_tensors(expected: object, actual: object, where: str = "") -> None:
    """Recursively equal, tensors bit for bit (a list equals a tuple: the optimizer state loader turns betas into a
    list)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and expected.keys() == actual.keys(), where
        for key in expected:
            _assert_same_tensors(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            _assert_same_tensors(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def _trainer_state(out_dir: Path, name: str = "last") -> dict:
    return torch.load(out_dir / name / "trainer_state.pt", weights_only=True)


def _records(out_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing field (the one thing that may differ between identical runs)."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{key: value for key, value in json.loads(line).items() if key != "tokens_per_s"} for line in lines]


class _RandomMask(Task):
    """A loss that draws from the global torch RNG (like masking for MLM), so resuming must restore it."""

    def compute_loss(self, model, batch):
        keep = torch.rand(batch["labels"].shape, device=batch["labels"].device) < 0.7
        return super().compute_loss(model, {**batch, "labels": batch["labels"].where(keep, IGNORE_INDEX)})


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_resume_after_sigterm_is_bit_identical(tmp_path, streaming):
    examples, eval_examples = _examples(26), _examples(8, seed=2)
    data = _Stream(examples) if streaming else examples
    full = _model()
    completed = fit(full, _RandomMask(), data, eval_examples, config=_config(tmp_path / "full"))
    assert (completed.status, completed.step, completed.exit_code) == ("completed", 8, 0)

    split = tmp_path / "split"
    stopped = fit(
        _model(), _RandomMask(), data, eval_examples, config=_config(split), callbacks=[_send_at(5, signal.SIGTERM)]
    )
    assert (stopped.status, stopped.step, stopped.interrupted_by, stopped.exit_code) == (
        "interrupted",
        5,
        "SIGTERM",
        143,
    )
    assert _trainer_state(split)["step"] == 5
    assert [record["step"] for record in _records(split)][-1] == 5

    # Other initial weights: everything must come from the checkpoint.
    resumed = _model(seed=123)
    finished = fit(resumed, _RandomMask(), data, eval_examples, config=_config(split, resume=True))
    assert (finished.status, finished.step, finished.epoch) == ("completed", 8, completed.epoch)
    _assert_same_tensors(full.state_dict(), resumed.state_dict(), "parameters")
    for name in ("last", "best"):
        expected, actual = _trainer_state(tmp_path / "full", name), _trainer_state(split, name)
        _assert_same_tensors(expected, actual, name)  # optimizer, scheduler, data position, RNG, best metric
    assert (finished.best_metric, finished.best_step, finished.metrics) == (
        completed.best_metric,
        completed.best_step,
        completed.metrics,
    )
    # The metrics log continues the step count, and reads (timings aside) like the uninterrupted run's.
    assert _records(split) == _records(tmp_path / "full")
    assert [record["step"] for record in _records(split) if "loss" in record] == list(range(1, 9))


def test_sigint_writes_a_loadable_checkpoint_and_restores_handlers(tmp_path):
    def handler(signum, frame):
        raise AssertionError("the trainer's handler should have been installed")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        model = _model()
        result = fit(
            model, Task(), _examples(26), config=_config(tmp_path, save_every=0), callbacks=[_send_at(2, signal.SIGINT)]
        )
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (result.status, result.step, result.exit_code) == ("interrupted", 2, 130)
    loaded = load_model(tmp_path / "last")
    _assert_same_tensors(
        {name: tensor.cpu() for name, tensor in model.state_dict().items()}, loaded.state_dict(), "weights"
    )
    assert json.loads((tmp_path / "last" / "train_config.json").read_text())["save_every"] == 0
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary leftovers


class _NanAt(Task):
    """Returns a NaN loss at the `call`-th training loss (counting from 1)."""

    def __init__(self, call: int) -> None:
        self.call, self.calls = call, 0

    def compute_loss(self, model, batch):
        self.calls += 1
        loss = super().compute_loss(model, batch)
        return loss * math.nan if self.calls == self.call else loss


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path):
    snapshot: dict[str, bytes] = {}

    def remember_last(info: StepInfo) -> None:
        if info.step == 4:
            snapshot.update({path.name: path.read_bytes() for path in (tmp_path / "last").iterdir()})

    config = _config(tmp_path, grad_accum_steps=1, save_every=2, max_steps=10)
    with pytest.raises(TrainingDiverged, match="training diverged at step 5: loss nan") as caught:
        fit(_model(), _NanAt(5), _examples(26), config=config, callbacks=[remember_last])
    assert caught.value.step == 5 and caught.value.checkpoint == tmp_path / "last"
    assert set(snapshot) >= {"config.json", "model.safetensors", "trainer_state.pt", "train_config.json"}
    assert {path.name: path.read_bytes() for path in (tmp_path / "last").iterdir()} == snapshot
    assert [record["step"] for record in _records(tmp_path)][-1] == 4


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo missing")
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_torchrun_two_processes_agree_and_only_rank0_writes(tmp_path, kind):
    out_dir, reports = tmp_path / "run", tmp_path / "reports"
    reports.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(ROOT / "tests" / "distributed_train.py"),
        str(out_dir),
        str(reports),
        kind,
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stderr[-4000:]
    rank0, rank1 = (json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["digest"] == rank1["digest"]
    assert (rank0["status"], rank0["step"]) == ("completed", 4)
    assert rank1["written"] == []
    assert any("metrics.jsonl" in entry for entry in rank0["written"])
    assert any("last" in entry for entry in rank0["written"])
    # The checkpoint holds the parameters both processes ended with, and each step was logged once.
    assert parameter_digest(load_model(out_dir / "last")) == rank0["digest"]
    steps = [record["step"] for record in _records(out_dir) if "loss" in record]
    assert steps == [1, 2, 3, 4]
    assert _trainer_state(out_dir)["world_size"] == 2


def test_parameter_groups_exempt_ssm_parameters_biases_and_norms():
    model = _model(bias=True)
    groups = parameter_groups(model, weight_decay=0.1)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed, exempt = ({names[id(parameter)] for parameter in group["params"]} for group in groups)
    assert [group["weight_decay"] for group in groups] == [0.1, 0.0]
    mixer = "backbone.layers.0.mixer"
    assert exempt == {
        f"{mixer}.A_log",
        f"{mixer}.D",
        f"{mixer}.dt_proj.bias",
        f"{mixer}.conv1d.bias",
        f"{mixer}.in_proj.bias",
        f"{mixer}.out_proj.bias",
        "backbone.layers.0.norm.weight",
        "backbone.norm_f.weight",
    }
    # Embeddings decay (mamba-ssm's convention); the tied lm_head is the same tensor, listed once.
    assert decayed == {
        "backbone.embedding.weight",
        f"{mixer}.in_proj.weight",
        f"{mixer}.conv1d.weight",
        f"{mixer}.x_proj.weight",
        f"{mixer}.dt_proj.weight",
        f"{mixer}.out_proj.weight",
    }


@pytest.mark.parametrize("warmup", [{"warmup_steps": 2}, {"warmup_ratio": 1 / 3}])
def test_warmup_then_cosine_learning_rates(tmp_path, warmup):
    config = TrainConfig(out_dir=tmp_path, max_steps=6, batch_size=4, lr=1e-2, min_lr_ratio=0.1, log_every=1, **warmup)
    fit(_model(), Task(), _examples(24), config=config)
    lrs = [record["lr"] for record in _records(tmp_path)]
    # Warm-up (s + 1) / 2; then cosine over steps 2..5 from 1e-2 to 1e-3: progress 0, 1/3, 2/3, 1.
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.001 + 0.009 * 0.75, 0.001 + 0.009 * 0.25, 0.001], rel=1e-12)


def test_two_accumulated_half_batches_equal_one_full_batch(tmp_path):
    whole, halves = _model(), _model()
    fit(whole, Task(), _examples(24), config=_config(tmp_path / "whole", batch_size=8, grad_accum_steps=1, max_steps=3))
    fit(
        halves,
        Task(),
        _examples(24),
        config=_config(tmp_path / "halves", batch_size=4, grad_accum_steps=2, max_steps=3),
    )
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(halves.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    whole_losses = [record["loss"] for record in _records(tmp_path / "whole") if "loss" in record]
    half_losses = [record["loss"] for record in _records(tmp_path / "halves") if "loss" in record]
    assert half_losses == pytest.approx(whole_losses, rel=1e-5)


class _RandomShift(Task):
    """Collation with randomness (a random cyclic shift per batch), like augmentation in an app."""

    def collate(self, examples):
        batch = super().collate(examples)
        shift = int(torch.randint(0, LENGTH, ()))
        return {name: value.roll(shift, dims=1) for name, value in batch.items()}


def test_data_workers_give_the_same_run(tmp_path):
    models = []
    for workers in (0, 2):
        models.append(_model())
        fit(
            models[-1],
            _RandomShift(),
            _examples(26),
            config=_config(tmp_path / str(workers), num_workers=workers, max_steps=4),
        )
    _assert_same_tensors(models[0].state_dict(), models[1].state_dict(), "parameters")


def test_a_sigterm_to_the_process_group_stops_at_a_step_boundary_with_loader_workers(tmp_path):
    """`timeout`, Ctrl-C and schedulers signal the whole process group, the loader workers included: the run must
    stop at a step boundary and save, not fail because its workers died under it."""
    (tmp_path / "config.yaml").write_text("train: {num_workers: 2, log_every: 1}\n")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mambakit", "train", "synthetic", "--task", "induction-heads", "--preset", "tiny"]
    options = ["--device", "cpu", "--max-steps", "100000", "--config", str(tmp_path / "config.yaml"), "--out", str(out)]
    process = subprocess.Popen([*command, *options], stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "internal error" not in stderr and "training interrupted at step" in stderr
    assert (out / "last").is_dir()


class _LengthRecorder(Task):
    def __init__(self) -> None:
        self.lengths: list[int] = []

    def compute_loss(self, model, batch):
        assert batch["labels"].shape == batch["input_ids"].shape
        self.lengths.append(batch["input_ids"].shape[1])
        return super().compute_loss(model, batch)


def test_sequence_length_warmup_crops_as_configured(tmp_path):
    task = _LengthRecorder()
    config = _config(tmp_path, grad_accum_steps=1, max_steps=5, seq_len_warmup=[[0, 4], [2, 8], [4, 100]])
    fit(_model(), task, _examples(26), config=config)
    assert task.lengths == [4, 4, 8, 8, LENGTH]  # stage lengths beyond the data's leave it whole
    assert [config.max_length_at(step) for step in (0, 1, 2, 3, 4, 99)] == [4, 4, 8, 8, 100, 100]
    batch = {"input_ids": torch.zeros(2, 12), "attention_mask": torch.ones(2, 12), "labels": torch.zeros(2)}
    cropped = Task().crop(batch, 5)
    assert {name: tuple(value.shape) for name, value in cropped.items()} == {
        "input_ids": (2, 5),
        "attention_mask": (2, 5),
        "labels": (2,),
    }


def test_evaluate_is_the_token_weighted_loss_and_keeps_the_mode(tmp_path):
    model = _model().train()
    examples = _examples(8)
    metrics = evaluate(model, Task(), examples, _config(tmp_path, batch_size=4, precision="fp32"))
    device = next(model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in Task().collate(examples).items()}
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert metrics == {"loss": pytest.approx(expected, rel=1e-5)}
    assert model.training


def test_train_config_json_round_trip_and_errors(tmp_path):
    config = _config(tmp_path, seq_len_warmup=[[0, 64], [10, 128]], betas=[0.9, 0.99])
    path = tmp_path / "train.json"
    path.write_text(config.to_json())
    assert TrainConfig.load(path) == config
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]; known keys: out_dir, max_steps, epochs"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})
    for changes, message in [
        ({"max_steps": None, "epochs": None}, "set max_steps or epochs"),
        ({"warmup_ratio": 0.1}, "warmup_steps or warmup_ratio, not both"),
        ({"seq_len_warmup": [[5, 64]]}, "must start at step 0"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            config.replace(**changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_cuda_device_without_cuda_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as caught:
        fit(_model(), Task(), _examples(8), config=_config(tmp_path / "run", device="cuda"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("device 'cuda' was asked for, but CUDA is not available here")
    assert "use device 'cpu' or 'auto'" in message
    assert not (tmp_path / "run").exists()


def test_resume_and_fresh_start_refuse_the_wrong_out_dir(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume in"):
        fit(_model(), Task(), _examples(26), config=_config(tmp_path, resume=True))
    fit(_model(), Task(), _examples(26), config=_config(tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="already holds a training checkpoint"):
        fit(_model(), Task(), _examples(26), config=_config(tmp_path))
    with pytest.raises(ValueError, match="a stream .* set max_steps"):
        fit(_model(), Task(), _Stream(_examples(26)), config=_config(tmp_path / "s", max_steps=None, epochs=1))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    fit(_model(), Task(), _examples(26), config=_config(tmp_path, max_steps=1))
    last = tmp_path / "last"
    before = {path.name: path.read_bytes() for path in last.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        fit(_model(), Task(), _examples(26), config=_config(tmp_path, max_steps=2, resume=True))
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in last.iterdir()} == before
    assert not list(tmp_path.glob(".last*"))
    # A crash between the two renames of a swap leaves only .last.old: resuming puts it back.
    last.rename(tmp_path / ".last.old")
    result = fit(_model(), Task(), _examples(26), config=_config(tmp_path, max_steps=2, resume=True))
    assert (result.status, result.step) == ("completed", 2)


def test_bf16_autocast_and_grad_checkpointing_train_fp32_parameters(tmp_path):
    model = _model()
    result = fit(
        model, Task(), _examples(26), config=_config(tmp_path, precision="bf16", grad_checkpointing=True, max_steps=3)
    )
    assert result.status == "completed" and math.isfinite(result.train_loss)
    assert model.backbone.gradient_checkpointing
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    assert load_model(tmp_path / "last").backbone.embedding.weight.dtype == torch.float32


def test_weight_average_is_evaluated_saved_as_best_and_resumed_exactly(tmp_path):
    examples, eval_examples = _examples(26), _examples(8, seed=2)
    decay = 0.6
    model = _model()
    average = {name: p.detach().clone() for name, p in model.named_parameters()}

    def track(info: StepInfo) -> None:  # the average, computed here by its definition after every step
        for name, parameter in model.named_parameters():
            average[name] = decay * average[name] + (1 - decay) * parameter.detach()

    config = _config(tmp_path / "full", ema_decay=decay, eval_every=8)
    completed = fit(model, Task(), examples, eval_examples, config=config, callbacks=[track])
    best, last = load_model(tmp_path / "full" / "best"), load_model(tmp_path / "full" / "last")
    for name, parameter in model.named_parameters():
        assert torch.equal(last.state_dict()[name], parameter.detach()), name  # last/: the trained weights
        torch.testing.assert_close(best.state_dict()[name], average[name], rtol=1e-5, atol=1e-6)  # best/: the average
    assert completed.metrics == evaluate(best, Task(), eval_examples, config.eval_config())

    stopped = fit(
        _model(),
        Task(),
        examples,
        eval_examples,
        config=_config(tmp_path / "split", ema_decay=decay, eval_every=8),
        callbacks=[_send_at(5, signal.SIGTERM)],
    )
    assert stopped.status == "interrupted"
    resumed = _model(seed=7)
    finished = fit(
        resumed,
        Task(),
        examples,
        eval_examples,
        config=_config(tmp_path / "split", ema_decay=decay, eval_every=8, resume=True),
    )
    assert finished.metrics == completed.metrics
    _assert_same_tensors(_trainer_state(tmp_path / "full")["ema"], _trainer_state(tmp_path / "split")["ema"], "ema")
    fit(_model(), Task(), examples, eval_examples, config=_config(tmp_path / "plain"))
    with pytest.raises(ValueError, match="without ema_decay"):
        fit(
            _model(),
            Task(),
            examples,
            eval_examples,
            config=_config(tmp_path / "plain", max_steps=9, ema_decay=decay, resume=True),
        )
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(out_dir=tmp_path, max_steps=1, ema_decay=1.0)
