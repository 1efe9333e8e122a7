"""Trains the audio app's models on the GPU machine with `mambakit train audio`, each within a time budget: a short
probe run measures samples/s, the real run gets the steps that fit, and the exact command, its metrics on the
test split (`mambakit eval audio`) and the wall time are recorded.

    PYTHONPATH=.:bench python bench/audio_train.py --jobs lm-small,classify-small --out $OUT [--commit SHA]

Each job's best checkpoint (without the optimizer state) is packed as <out>/<job>.tar; bench/audio.py and the
packaging of the shipped model read those. Writes <out>/audio_train_<commit>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import report

#: name -> (mambakit train audio arguments without --max-steps/--out, training seconds to spend)
JOBS: dict[str, tuple[list[str], float]] = {
    "lm-small": (["--task", "lm", "--preset", "small", "--batch-size", "16", "--lr", "2e-3"], 170.0),
    "classify-base": (["--task", "classify", "--preset", "base", "--batch-size", "32", "--lr", "2e-3"], 240.0),
    "lm-large": (["--task", "lm", "--preset", "large", "--batch-size", "16", "--lr", "2e-3"], 150.0),
}
PROBE_STEPS = 30
CROP = 8000


def _run(arguments: list[str]) -> tuple[str, float]:
    command = [sys.executable, "-m", "mambakit", *arguments]
    report.log("$", shlex.join(["mambakit", *arguments]))
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return completed.stdout, seconds


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_samples_per_second(run: Path) -> float:
    rates = [row["tokens_per_s"] for row in _metrics(run / "metrics.jsonl") if "tokens_per_s" in row]
    return rates[-1]


def train_job(name: str, work: Path, out: Path, steps: int | None = None) -> dict[str, Any]:
    """Train job `name` for `steps` (default: what its time budget allows at the probe's speed)."""
    arguments, budget = JOBS[name]
    batch = int(arguments[arguments.index("--batch-size") + 1])
    rate = None
    if steps is None:
        probe = work / f"{name}-probe"
        shutil.rmtree(probe, ignore_errors=True)
        _run(["train", "audio", *arguments, "--max-steps", str(PROBE_STEPS), "--out", str(probe)])
        rate = _train_samples_per_second(probe)
        steps = max(PROBE_STEPS, int(budget * rate / (batch * CROP)) // 100 * 100)
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    train_arguments = ["train", "audio", *arguments, "--max-steps", str(steps), "--out", str(run)]
    _, train_seconds = _run(train_arguments)
    evaluation, _ = _run(["eval", "audio", "-c", str(run / "best")])
    archive = out / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        for file in sorted((run / "best").iterdir()):
            if file.name != "trainer_state.pt":
                tar.add(file, arcname=f"{name}/{file.name}")
        tar.add(run / "metrics.jsonl", arcname=f"{name}/metrics.jsonl")
    return {
        "job": name,
        "command": shlex.join(["mambakit", *train_arguments]),
        "probe_samples_per_s": rate,
        "steps": steps,
        "train_seconds": train_seconds,
        "validation": [row for row in _metrics(run / "metrics.jsonl") if any(k.startswith("eval_") for k in row)],
        "test_eval_output": evaluation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, from: {', '.join(JOBS)}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/audio_train"))
    parser.add_argument("--commit", default="")
    parser.add_argument("--max-steps", type=int, help="train every job this many steps (no probe run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = report.git_commit(args.commit)
    results: dict[str, Any] = {"machine": report.gpu_machine(), "commit": commit, "jobs": []}
    for name in args.jobs.split(","):
        results["jobs"].append(train_job(name, args.work, args.out, args.max_steps))
        report.log(json.dumps(results["jobs"][-1], indent=1))
        (args.out / f"audio_train_{commit or 'uncommitted'}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
