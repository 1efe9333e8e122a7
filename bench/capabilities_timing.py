"""Time a short stretch of every (task, model) run of a capability-suite tier through the same training path
(`mambakit bench capabilities` uses), so that the tier's step budgets are fixed from measured step times, as
../shared/notes/capabilities.md asks; and the evaluation of one long sequence batch.

    python bench/capabilities_timing.py --tier gpu [--steps 60] [--out DIR]

Prints, per run: seconds per training step (from two runs of different lengths, so start-up cancels) and the
steps the run could take in its share of a 10-minute task; writes DIR/capabilities_timing.json."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mambakit.apps.synthetic import bench

from mambakit.cli_support import resolve_device
from mambakit.domains import RunOptions


def _train_seconds(run: bench.CapabilityRun, steps: int, out: Path, device: str) -> float:
    from mambakit.apps.synthetic.cli import DOMAIN, SyntheticOptions

    from mambakit.cli_support import train_domain

    options = SyntheticOptions(family=run.family, positions=run.positions, **run.task_sizes, **run.options)
    run_dir = out / f"{run.name}-{steps}"
    train = {"eval_every": 0, "save_every": 0, "log_every": steps, "weight_decay": 0.0, **run.train}
    started = time.perf_counter()
    train_domain(
        DOMAIN,
        RunOptions(
            task=run.task,
            out=run_dir,
            max_steps=steps,
            batch_size=run.batch_size,
            lr=run.lr,
            device=device,
            model=dict(run.sizes),
            train=train,
        ),
        options,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="gpu", choices=sorted(bench.TIERS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all of the tier)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/capabilities_timing"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    runs = [r for r in bench.TIERS[args.tier][0] if args.tasks is None or r.task in args.tasks.split(",")]
    per_task: dict[str, int] = {}
    for run in runs:
        per_task[run.task] = per_task.get(run.task, 0) + 1
    results = []
    for run in runs:
        short = _train_seconds(run, args.steps // 3, args.out, device)
        long = _train_seconds(run, args.steps, args.out, device)
        step = (long - short) / (args.steps - args.steps // 3)
        share = 540 / per_task[run.task]  # 9 of a task's 10 minutes for training, shared by its models
        result = {
            "run": run.name,
            "seconds_per_step": round(step, 5),
            "startup_seconds": round(short - step * (args.steps // 3), 1),
            "configured_steps": run.steps,
            "configured_seconds": round(run.steps * step, 1),
            "steps_in_share": int(share / step),
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    environment = bench._environment(device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capabilities_timing.json").write_text(
        json.dumps(
            {"environment": environment, "settings": {**vars(args), "out": str(args.out)}, "runs": results}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
