"""Scale-out through torch.distributed on one CPU machine (gloo), issue #16.

Two torchrun launchers started together act as two nodes (c10d rendezvous on 127.0.0.1, one process each) and
train each domain through the CLI: both processes end with the parameters of the saved checkpoint, and only one
writes. A run saved on 2 processes resumes on 1 and on 4, one saved on 1 on 2, with DDP and FSDP: with the same
examples per step it ends where an uninterrupted run ends; with other examples per step the step, the schedule,
the epoch and the data position carry over, no example repeated or left out.

The launchers run under a timeout, and their output is in every assertion message.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from mambakit.errors import UserError
from mambakit.models import load_model
from mambakit.train.data import BatchStream, deal_position, derive_seed, epoch_order

sys.path.insert(0, str(Path(__file__).parent))
from distributed_train import free_port, parameter_digest, tiny_run

# bench/ is not a package: its scripts import their neighbours by name.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import scale_out

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo missing"
)

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "distributed_train.py"
TIMEOUT_S = 240
#: The resume runs: 32 training examples, 16 per step on any world size (grad_accum_steps 4 / processes) make
#: 2 steps an epoch; stopped after step 3 (in epoch 1, 16 of its examples consumed), resumed to step 6.
STEPS, STOP_AT, EXAMPLES_PER_STEP = 6, 3, 16


def _launch(commands: list[list[str]], logs: Path) -> list[str]:
    """Run the torchrun launchers `commands` together, each writing its output to a file under `logs`; assert that
    all of them succeed within TIMEOUT_S and return their outputs. A launcher still running then is stopped the
    way torchrun stops: SIGTERM to it, which passes it on to its workers and kills those that outlive its grace."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"launcher{index}.log" for index in range(len(commands))]
    processes = []
    for command, path in zip(commands, paths, strict=True):
        with open(path, "w") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    timed_out = False
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for process in processes:
            if process.poll() is None:
                scale_out.stop(process)
    outputs = [path.read_text() for path in paths]
    summary = "\n".join(
        f"--- launcher {i}, exit code {p.returncode}:\n{o[-3000:]}"
        for i, (p, o) in enumerate(zip(processes, outputs, strict=True))
    )
    assert not timed_out, f"the launchers ran past {TIMEOUT_S} s\n{summary}"
    assert all(process.returncode == 0 for process in processes), summary
    return outputs


def _torchrun(processes: int, *arguments: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        *map(str, arguments),
    ]


def _reports(folder: Path, processes: int) -> list[dict]:
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(processes)]


# Two nodes through the CLI -------------------------------------------------------------------------------------------


def _tiny_cli_arguments(domain: str, folder: Path) -> list[str]:
    """Options that make `mambakit train DOMAIN --preset tiny --max-steps 2` take seconds on a CPU."""
    if domain == "text":
        corpus = folder / "corpus.txt"
        corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
        return ["--data", str(corpus), "--seq-len", "32", "--batch-size", "4"]
    if domain == "genomics":
        return ["--seq-len", "64", "--batch-size", "8"]
    if domain == "vision":
        return ["--model", "test_vmamba", "--img-size", "28", "--batch-size", "16"]
    model = folder / "model.yaml"
    if domain == "audio":
        model.write_text("model:\n  d_model: 8\n  n_layers: 1\n  d_state: 4\n  pools: [2, 2]\n")
        return ["--crop", "512", "--batch-size", "8", "--config", str(model)]
    model.write_text("model:\n  d_model: 16\n  n_layer: 1\n  d_state: 4\n")
    return ["--batch-size", "4", "--config", str(model)]


@pytest.mark.parametrize(
    "domain",
    [
        "text",
        *(pytest.param(domain, marks=pytest.mark.slow) for domain in ("genomics", "vision", "audio", "synthetic")),
    ],
)
def test_two_nodes_train_through_the_cli_to_one_model_and_one_writer(tmp_path, domain):
    """Each node has its own --out, as two machines without a shared filesystem would: the process of rank 0
    writes the run into its own, the other creates nothing anywhere under tmp_path."""
    nodes, reports = tmp_path / "nodes", tmp_path / "reports"
    nodes.mkdir()
    reports.mkdir()
    options = _tiny_cli_arguments(domain, tmp_path)
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex
    launchers = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            run_id,
            str(HELPER),
            "--cli",
            str(reports),
            str(tmp_path),
            "train",
            domain,
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(nodes / f"node{node}"),
            *options,
        ]
        for node in (0, 1)
    ]
    outputs = _launch(launchers, tmp_path / "logs")
    rank0, rank1 = _reports(reports, 2)
    context = "\n".join(outputs)[-4000:]
    assert [(report["exit_code"], report["status"], report["step"]) for report in (rank0, rank1)] == [
        (0, "completed", 2)
    ] * 2, context
    written = [path.name for path in nodes.iterdir()]
    assert len(written) == 1, (written, context)  # c10d ranks the nodes itself: either may hold rank 0
    out = nodes / written[0]
    assert rank1["written"] == [], context
    assert rank0["written"] and all(entry.split(" ", 1)[1].startswith(str(out)) for entry in rank0["written"])
    assert {"last", "best", "metrics.jsonl", "run_config.json"} <= {path.name for path in out.iterdir()}
    if domain == "vision":  # load_model alone misses the classifier: the vision app registers it only when it trains
        importlib.import_module("mambakit.apps.vision.classifier")
    assert rank0["digest"] == rank1["digest"] == parameter_digest(load_model(out / "last")), context


# Resume across world sizes ------------------------------------------------------------------------------------------


def _resume_run(out_dir: Path, processes: int, kind: str, *, stop_at: int | None = None, resume: bool) -> str:
    """The tiny run of tests/distributed_train.py at 16 examples per step to step STEPS, on `processes` processes
    (1: in this process); the launcher's output ('' in this process)."""
    accumulation = EXAMPLES_PER_STEP // 4 // processes
    if processes == 1:
        tiny_run(
            out_dir, stop_at=stop_at, distributed=kind, grad_accum_steps=accumulation, max_steps=STEPS, resume=resume
        )
        return ""
    reports = out_dir.parent / f"reports-{out_dir.name}"
    reports.mkdir()
    arguments = ["--max-steps", STEPS, "--grad-accum-steps", accumulation]
    if stop_at is not None:
        arguments += ["--stop-at", stop_at]
    if resume:
        arguments.append("--resume")
    output = _launch([_torchrun(processes, HELPER, out_dir, reports, kind, *arguments)], out_dir.parent / "logs")[0]
    digests = {report["digest"] for report in _reports(reports, processes)}
    assert digests == {parameter_digest(load_model(out_dir / "last"))}, output[-4000:]
    return output


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The run on one process from start to end: what every resumed run must end as."""
    out_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _resume_run(out_dir, 1, "ddp", resume=False)
    return out_dir


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory) -> dict[str, Path]:
    """Per wrapper, a run folder that 2 processes stopped after step STOP_AT (a SIGTERM: it saved last/)."""

    def stopped(kind: str) -> Path:
        out_dir = tmp_path_factory.mktemp(f"saved-{kind}") / "run"
        _resume_run(out_dir, 2, kind, stop_at=STOP_AT, resume=False)
        return out_dir

    return {kind: stopped(kind) for kind in ("ddp", "fsdp")}


def _trainer_state(out_dir: Path) -> dict:
    return torch.load(out_dir / "last" / "trainer_state.pt", weights_only=True)


def _learning_rates(out_dir: Path) -> dict[int, float]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["lr"] for record in map(json.loads, lines) if "lr" in record}


def _assert_ends_as(out_dir: Path, expected: Path) -> None:
    """The run in `out_dir` ended as the one in `expected`: its weights and optimizer moments (to float rounding:
    the processes sum gradients in another order), its step, schedule, epoch and data position (exactly)."""
    weights, expected_weights = load_model(out_dir / "last").state_dict(), load_model(expected / "last").state_dict()
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)
    state, reference = _trainer_state(out_dir), _trainer_state(expected)
    assert (state["step"], state["epoch"], state["examples_in_epoch"] * state["world_size"] + state["epoch_start"]) == (
        reference["step"],
        reference["epoch"],
        reference["examples_in_epoch"] * reference["world_size"] + reference["epoch_start"],
    )
    assert state["scheduler"]["last_epoch"] == reference["scheduler"]["last_epoch"] == STEPS
    assert state["scheduler"]["_last_lr"] == pytest.approx(reference["scheduler"]["_last_lr"])
    moments, expected_moments = state["optimizer"]["state"], reference["optimizer"]["state"]
    assert moments.keys() == expected_moments.keys()
    for name, moment in expected_moments.items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(moments[name][key], moment[key], rtol=0, atol=1e-6, msg=f"{name} {key}")
    assert _learning_rates(out_dir) == pytest.approx(_learning_rates(expected))


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
@pytest.mark.parametrize(("saved", "resumed"), [(2, 1), (2, 4), (1, 2)], ids=["2to1", "2to4", "1to2"])
def test_resume_on_another_world_size_ends_as_the_uninterrupted_run(
    tmp_path, kind, saved, resumed, saved_on_two, uninterrupted, caplog
):
    out_dir = tmp_path / "run"
    if saved == 2:
        shutil.copytree(saved_on_two[kind], out_dir)
    else:
        _resume_run(out_dir, saved, kind, stop_at=STOP_AT, resume=False)
    assert _trainer_state(out_dir)["step"] == STOP_AT
    with caplog.at_level(logging.WARNING, logger="mambakit.train.trainer"):
        output = _resume_run(out_dir, resumed, kind, resume=True)
    plural = "es" if resumed > 1 else ""
    line = (
        f"resuming on {resumed} process{plural} a run saved on {saved}: step 3, epoch 1 and its 16 consumed examples "
        f"carry over, the epoch's other examples are dealt anew; examples per step stay 16"
    )
    assert line in output + caplog.text, output[-4000:]
    _assert_ends_as(out_dir, uninterrupted)


def test_resume_with_other_examples_per_step_keeps_the_position_and_replans_epochs(tmp_path, saved_on_two, caplog):
    """Saved on 2 processes at 16 examples per step, resumed on 1 at 8 (the same batch_size and grad_accum_steps):
    the rest of epoch 1 and then all of epoch 2 are read once each, in the permutation's order, and the run, now
    sized by epochs, is re-planned to the steps those take."""
    out_dir = tmp_path / "run"
    shutil.copytree(saved_on_two["ddp"], out_dir)
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="mambakit.train.trainer"):
        _, result = tiny_run(out_dir, seen=seen, resume=True, max_steps=None, epochs=3)
    assert (
        "resuming on 1 process a run saved on 2: step 3, epoch 1 and its 16 consumed examples carry over, the "
        "epoch's other examples are dealt anew; examples per step change from 16 to 8 (batch_size 4 x "
        "grad_accum_steps 2 x 1 process); to keep 16, resume with grad_accum_steps 4; the schedule now ends at "
        "step 9 (was 6)"
    ) in caplog.text
    permutation = [
        torch.randperm(32, generator=torch.Generator().manual_seed(derive_seed(0, epoch))) for epoch in (1, 2)
    ]
    assert seen == permutation[0][16:].tolist() + permutation[1].tolist()
    assert (result.status, result.step, result.epoch) == ("completed", 9, 3)
    state = _trainer_state(out_dir)
    assert (state["world_size"], state["examples_per_step"], state["total_steps"]) == (1, 8, 9)
    assert state["scheduler"]["last_epoch"] == 9
    model = load_model(out_dir / "last")
    moments = state["optimizer"]["state"]
    assert moments.keys() == {name for name, _ in model.named_parameters()}
    for name, parameter in model.named_parameters():
        assert moments[name]["exp_avg"].shape == moments[name]["exp_avg_sq"].shape == parameter.shape, name
        assert moments[name]["step"] == 9


# The data position, dealt among any world size ---------------------------------------------------------------------


class _Stream(IterableDataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self):
        return iter(range(self.count))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("consumed", [0, 5, 6, 12, 29])
def test_the_rest_of_an_epoch_is_dealt_once_among_any_world_size(consumed, world_size):
    """Whatever world size consumed `consumed` examples, the processes of `world_size` read the others in order,
    round-robin, each once; from a stream as from a permutation."""
    start, skip = deal_position(consumed, world_size)
    assert start + skip * world_size == consumed and 0 <= start < world_size
    permutation = torch.randperm(30, generator=torch.Generator().manual_seed(derive_seed(7, 1))).tolist()
    orders = [epoch_order(30, 7, 1, rank, world_size, start)[skip:] for rank in range(world_size)]
    streams = [
        [
            int(batch)
            for batch in BatchStream(
                _Stream(30),
                torch.tensor,
                1,
                order=None,
                skip=skip,
                drop_last=True,
                seed_words=(0,),
                rank=rank,
                world_size=world_size,
                start=start,
            )
        ]
        for rank in range(world_size)
    ]
    for dealt, source in ((orders, permutation), (streams, list(range(30)))):
        assert len({len(share) for share in dealt}) == 1
        interleaved = [share[index] for index in range(len(dealt[0])) for share in dealt]
        assert interleaved == source[consumed : consumed + len(interleaved)]
        assert len(source) - consumed - len(interleaved) < world_size


@pytest.mark.parametrize(("key", "value"), [("world_size", 0), ("epoch_start", -1), ("examples_per_step", "16")])
def test_a_tampered_world_size_or_position_is_one_line(tmp_path, key, value):
    out_dir = tmp_path / "run"
    tiny_run(out_dir, max_steps=1)
    path = out_dir / "last" / "trainer_state.pt"
    torch.save({**torch.load(path, weights_only=True), key: value}, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match=f"^{path}: the trainer state has an invalid {key} "):
        tiny_run(out_dir, max_steps=2, resume=True)
    assert path.read_bytes() == before


# The scaling benchmark, bench/scale_out.py --------------------------------------------------------------------------


def test_the_benchmark_reads_examples_per_second_from_the_steps_it_keeps(tmp_path):
    """Two processes, 2 windows of 4 tokens a micro-batch: 4 examples and 12 predicted tokens a step. Steps 1-2 are
    start-up and step 5 starts the data loader anew (step 4 ended epoch 0): 3, 4 and 6 take 1, 0.5 and 2 s."""
    workload = scale_out.Workload(
        "text", "tiny", "cpu", (), batch_size=2, steps=6, skip_steps=2, num_workers=0, unit="tokens",
        units_per_example=4, counted_per_example=3,
    )  # fmt: skip
    rates_and_epochs = [(1.0, 0), (1.0, 0), (12.0, 0), (24.0, 1), (1.0, 1), (6.0, 1)]
    records = [
        {"step": step, "epoch": epoch, "tokens_per_s": rate} for step, (rate, epoch) in enumerate(rates_and_epochs, 1)
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(record) + "\n" for record in [*records, {"step": 6, "eval_loss": 1.0}]))
    measured = scale_out.throughput(metrics, workload, processes=2, grad_accum_steps=1)
    assert measured["examples_per_s"] == pytest.approx(3 * 4 / 3.5)
    assert measured["tokens_per_s"] == pytest.approx(4 * 3 * 4 / 3.5)
    assert (measured["measured_steps"], measured["step_ms_median"]) == (3, pytest.approx(1000))
    assert measured["left_out_steps"] == {"start": 2, "data_loader_restarts": 1}


@pytest.mark.slow
def test_the_benchmark_trains_on_one_and_two_processes_and_reports_the_ratio(tmp_path):
    """The CPU preset's text run through torchrun and the CLI on 1 process and on 2 with DDP (gloo)."""
    measured = scale_out.measure(
        {"text": scale_out.PRESETS["cpu"]["text"]}, [1, 2], ["ddp"], tmp_path, timeout_s=TIMEOUT_S
    )
    one, two = measured["runs"]
    assert "error" not in one and "error" not in two, (one.get("error"), two.get("error"))
    assert (one["processes"], one["wrapper"], two["processes"], two["wrapper"]) == (1, None, 2, "ddp")
    for run in (one, two):
        assert run["examples_per_s"] > 0 and run["measured_steps"] == 12
        assert run["command"].startswith(f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node")
    assert measured["scaling"] == [
        {"domain": "text", "wrapper": "ddp", "processes": 2, "ratio": two["examples_per_s"] / one["examples_per_s"]}
    ]
