"""A training run's lifecycle through `mambakit train` (#15): a run that is refused (resumed with other settings,
not resumed, already running, a damaged run file, an --out that cannot be a run folder) says so in one line, exits
2 and leaves --out as it was; one run uses a folder at a time, and a killed run leaves no lock behind; Ctrl-C and
divergence say what was kept; runs killed (SIGKILL) at random moments leave checkpoints that load and resume.

Runs are the synthetic domain's induction-heads task at length 8 (the fastest domain: no data to read). Most run
in this process; a run that must be killed is a forked child of it (mambakit already imported: it starts in
milliseconds), and the slow kill loop starts real `python -m mambakit` processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mambakit.cli import main
from mambakit.models import load_model
from mambakit.train import trainer as trainer_module
from mambakit.train.checkpointing import complete_copy, read_trainer_state
from mambakit.train.run_folder import OWNER_NAME

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = ["train", "synthetic", "--task", "induction-heads", "--length", "8", "--vocab", "4", "--batch-size", "128"]
#: How long a started run may take to be accepted or to save its first checkpoint.
START_TIMEOUT_S = 120


def _train(out: Path, *flags: str, steps: int = 2) -> int:
    return main([*SYNTHETIC, "--max-steps", str(steps), "--out", str(out), *flags])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `mambakit: ...` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("mambakit:")]
    assert len(lines) == 1, err
    return lines[0]


def _saved_run(tmp_path: Path) -> Path:
    """The folder of a finished 2-step run."""
    out = tmp_path / "run"
    assert _train(out) == 0
    return out


def _saving_every_step(tmp_path: Path, **train: int) -> Path:
    """A --config file that saves (and logs) at every step, plus `train` settings."""
    config = tmp_path / "every-step.json"
    config.write_text(json.dumps({"train": {"save_every": 1, "log_every": 1, **train}}))
    return config


def _saved_step(out: Path) -> int:
    source = complete_copy(out / "last")
    assert source is not None
    return read_trainer_state(source)["step"]


def _train_records(out: Path) -> list[int]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "loss" in record]


# Refused runs: one line, exit 2, --out unchanged.


def test_resume_with_other_settings_names_them_and_changes_nothing(tmp_path, capsys):
    out = _saved_run(tmp_path)
    before = _files(out)
    capsys.readouterr()
    assert _train(out, "--resume", "--preset", "small") == 2
    assert _error(capsys) == (
        f"mambakit: error: --preset small does not match the run in {out} (tiny); resume with the same settings or "
        f"choose another --out"
    )
    assert _train(out, "--resume", "--model", "transformer") == 2
    assert f"--model transformer does not match the run in {out} (mamba)" in _error(capsys)
    assert main(["train", "text", "--resume", "--max-steps", "3", "--out", str(out)]) == 2
    assert f"{out} holds a synthetic run, not a text one; resume it with `mambakit train synthetic`" in _error(capsys)
    assert _files(out) == before


def test_resume_of_a_run_made_elsewhere_compares_the_model(tmp_path, capsys):
    out = _saved_run(tmp_path)
    (out / "run_config.json").unlink()  # as a run made through the Python API
    before = _files(out)
    capsys.readouterr()
    assert _train(out, "--resume", "--preset", "small") == 2
    assert f"the model does not match the checkpoint in {out / 'last'}: d_model 64 (the checkpoint's: 32)" in _error(
        capsys
    )
    assert _files(out) == before


def test_a_refused_new_run_writes_nothing(tmp_path, capsys):
    out = _saved_run(tmp_path)
    before = _files(out)
    capsys.readouterr()
    assert _train(out, "--preset", "small", steps=3) == 2
    assert _error(capsys) == (
        f"mambakit: error: {out} already holds a training checkpoint (last/): continue it with resume (--resume), "
        f"or choose another out_dir (--out)"
    )
    assert _files(out) == before
    assert _train(tmp_path / "new", "--resume") == 2
    assert "nothing to resume in" in _error(capsys)
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_without_trainer_state_gives_advice_that_works(tmp_path, capsys):
    out = _saved_run(tmp_path)
    (out / "last" / "trainer_state.pt").unlink()
    capsys.readouterr()
    assert _train(out, "--resume") == 2
    assert _error(capsys).endswith(
        f"nothing to resume in {out}: last/ has no trainer_state.pt; start over with another out_dir (--out), or "
        f"delete {out / 'last'}"
    )
    assert _train(out) == 2
    assert _error(capsys).endswith(
        f"{out / 'last'} has no trainer_state.pt, so it cannot be resumed, and a new run would replace it: delete "
        f"{out / 'last'} to start over there, or choose another out_dir (--out)"
    )
    for path in (out / "last").iterdir():
        path.unlink()
    (out / "last").rmdir()
    assert _train(out) == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda out: torch.save({"step": 2, "epoch": 0}, out / "last" / "trainer_state.pt"),
            "last/trainer_state.pt: the trainer state lacks examples_in_epoch, best_metric, best_step, optimizer, "
            "scheduler, rng (not written by mambakit's trainer, or edited); restore it, or start over",
        ),
        (
            lambda out: (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": "two", "loss": 1}\n'),
            'metrics.jsonl line 2: a record without a numeric step ({"step": "two", "loss": 1}); delete that line '
            "(or the file) and resume again",
        ),
        (
            lambda out: (out / "run_config.json").write_text("{not json"),
            "run_config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            "(char 1)); restore it, or delete it to resume without comparing the settings",
        ),
        (
            lambda out: (out / "run_config.json").write_text("[1, 2]"),
            "run_config.json: not a run configuration (a JSON object with options, domain_options, model); restore",
        ),
    ],
    ids=["trainer-state-keys", "metrics-step", "run-config-json", "run-config-object"],
)
def test_a_damaged_run_file_is_one_line_naming_it(tmp_path, capsys, damage, message):
    out = _saved_run(tmp_path)
    damage(out)
    before = _files(out)
    capsys.readouterr()
    assert _train(out, "--resume", steps=3) == 2
    error = _error(capsys)
    assert error.startswith(f"mambakit: error: {out}") and message in error
    assert _files(out) == before


def test_an_out_that_cannot_be_a_run_folder(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("mine")
    assert _train(file) == 2
    assert _error(capsys) == f"mambakit: error: {file} is a file, not a run folder; choose another out_dir (--out)"
    assert _train(file / "run") == 2
    assert f"{file / 'run'} is under {file}, a file, not a run folder" in _error(capsys)
    assert file.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: chmod does not bite")
def test_an_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _train(locked) == 2
        assert f"{locked} is not writable (permission denied); fix its permissions" in _error(capsys)
        assert _train(locked / "run") == 2
        assert f"cannot create the run folder {locked / 'run'} (Permission denied)" in _error(capsys)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


# What stopping says.


def test_divergence_says_what_was_kept(tmp_path, capsys):
    assert _train(tmp_path / "fresh", "--lr", "1e29", steps=5) == 2
    error = _error(capsys)
    assert error.startswith("mambakit: error: training diverged at step ") and "no checkpoint was saved yet" in error
    assert "last good" not in error
    config = _saving_every_step(tmp_path)
    assert _train(tmp_path / "saved", "--lr", "1e29", "--config", str(config), steps=5) == 2
    assert f"{tmp_path / 'saved' / 'last'} still holds the last good checkpoint" in _error(capsys)
    load_model(tmp_path / "saved" / "last")


def test_a_second_ctrl_c_says_what_it_kept(tmp_path, capsys, monkeypatch):
    write_checkpoint = trainer_module.write_checkpoint
    calls = []

    def interrupted_twice(*args, **kwargs):  # Ctrl-C twice while the step-2 checkpoint is written
        calls.append(args[0])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        write_checkpoint(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "write_checkpoint", interrupted_twice)
    config = _saving_every_step(tmp_path)
    out = tmp_path / "run"
    assert _train(out, "--config", str(config), steps=5) == 130
    assert _error(capsys) == (
        f"mambakit: stopped at once by a second Ctrl-C after step 2, without saving; {out / 'last'} keeps step 1: "
        f"continue from it with resume (--resume)"
    )
    monkeypatch.undo()
    assert _saved_step(out) == 1
    assert _train(out, "--resume", "--config", str(config), steps=3) == 0
    assert _train_records(out) == [1, 2, 3]


# One run per folder; killed runs.


def _forked(args: list[str], log: Path) -> tuple[int, Callable[[], int]]:
    """A child of this process running the CLI with `args` (output into `log`): its pid and a wait for its exit
    status (-N when a signal N ended it)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = main(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def wait() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    return pid, wait


def _spawned(args: list[str], log: Path) -> tuple[int, Callable[[], int]]:
    """A `python -m mambakit` process running `args` (output into `log`): its pid and a wait for its exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "mambakit", *args], stdout=output, stderr=output, env=env)
    return process.pid, process.wait


def _wait_for(condition: Callable[[], bool], pid: int, log: Path) -> None:
    """Until `condition` holds; fails, showing the run's output, when the run ended first or took too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        ended, _ = os.waitpid(pid, os.WNOHANG)
        assert not ended and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.01)


def _accepted(out: Path, pid: int) -> Callable[[], bool]:
    """Whether run `pid` was accepted into `out` (it records its pid there then)."""

    def check() -> bool:
        try:
            return (out / OWNER_NAME).read_text().strip() == str(pid)
        except FileNotFoundError:
            return False

    return check


def test_one_run_per_folder_and_a_killed_run_leaves_no_lock(tmp_path, capsys):
    out, config = tmp_path / "run", _saving_every_step(tmp_path)
    args = [*SYNTHETIC, "--max-steps", "100000", "--config", str(config), "--out", str(out)]
    pid, wait = _forked(args, tmp_path / "first.log")
    try:
        _wait_for(lambda: (out / "last").is_dir(), pid, tmp_path / "first.log")
        run_config = (out / "run_config.json").read_bytes()
        capsys.readouterr()
        for second in (args, [*args, "--resume"]):
            assert main(second) == 2
            assert _error(capsys) == (
                f"mambakit: error: {out} is in use by another mambakit run (pid {pid}); wait for it or choose "
                f"another out_dir (--out)"
            )
        assert (out / "run_config.json").read_bytes() == run_config
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait() == -signal.SIGKILL
    step = _saved_step(out)
    assert _train(out, "--resume", "--config", str(config), steps=step + 1) == 0
    assert _train_records(out) == list(range(1, step + 2))
    assert not (out / OWNER_NAME).exists()


def _kill_loop(tmp_path: Path, kills: int, start: Callable[..., tuple[int, Callable[[], int]]]) -> None:
    """Start a run (a new one, then --resume) and SIGKILL it at a random moment after it was accepted, `kills`
    times, saving every step (so kills land in saves); after each, every checkpoint there loads. Then the run
    resumes to its end, and its metrics read as one uninterrupted run."""
    out, config, log = tmp_path / "run", _saving_every_step(tmp_path, eval_every=3), tmp_path / "run.log"
    args = [*SYNTHETIC, "--max-steps", "100000", "--config", str(config), "--out", str(out)]
    rng = random.Random(15)
    for kill in range(kills):
        pid, wait = start([*args, "--resume"] if kill else args, log)
        _wait_for(_accepted(out, pid), pid, log)
        if kill == 0:  # the first run saves once, so that there is something to resume
            _wait_for(lambda: (out / "last").is_dir(), pid, log)
        time.sleep(rng.uniform(0, 0.8))  # a step takes about 0.2 s, half of it saving
        os.kill(pid, signal.SIGKILL)
        assert wait() == -signal.SIGKILL
        for name in ("last", "best"):
            if (out / name).exists():
                load_model(out / name)
        assert complete_copy(out / "last") is not None  # last/, or .last.old where the kill split a swap
    step = _saved_step(out)
    assert _train(out, "--resume", "--config", str(config), steps=step + 2) == 0
    assert _train_records(out) == list(range(1, step + 3))
    load_model(out / "last")
    load_model(out / "best")
    assert sorted(path.name for path in out.iterdir()) == ["best", "last", "metrics.jsonl", "run_config.json"]


def test_runs_killed_at_random_moments_leave_loadable_checkpoints_that_resume(tmp_path):
    _kill_loop(tmp_path, 3, _forked)


@pytest.mark.slow
def test_cli_processes_killed_at_random_moments(tmp_path):
    # 30 kills passed when this was written (142 s); the suite keeps 10, about a third of the time.
    _kill_loop(tmp_path, int(os.environ.get("MAMBAKIT_TEST_KILLS", "10")), _spawned)
