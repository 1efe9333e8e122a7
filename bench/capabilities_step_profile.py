"""Where a capability-suite training step's time goes on the GPU, for the runs of a tier: the model's forward +
backward + AdamW on a fixed batch (CUDA events), eager and with the forward and backward replayed as a CUDA graph
(TrainConfig.cuda_graphs), beside how long the data loader takes per batch, and what the run's configured steps
then cost. The notes ask that every tier budget be fixed from measured step times.

    python bench/capabilities_step_profile.py [--tier gpu] [--runs all|NAME,NAME] [--workers 8] [--out FILE]

Prints one JSON line per run and writes them all to --out (default runs/capabilities_step_profile.json)."""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from mambakit.apps.synthetic import bench

from mambakit.train.step_graph import StepGraph


def profile(run: bench.CapabilityRun, workers: int) -> dict[str, Any]:
    """{model_step_ms, loader_ms, ...} of one tier run on the current CUDA device."""
    from mambakit.apps.synthetic.cli import DOMAIN, SyntheticOptions

    from mambakit.domains import RunOptions, TaskInputs

    spec = DOMAIN.task(run.task)
    options = SyntheticOptions(family=run.family, positions=run.positions, **run.task_sizes, **run.options)
    inputs = TaskInputs(RunOptions(task=run.task, model=dict(run.sizes)), options, None, DOMAIN.presets)
    splits = spec.data(inputs)
    model = spec.model(inputs, splits).cuda()
    task = spec.task(inputs)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_size=run.batch_size, collate_fn=task.collate, num_workers=workers, persistent_workers=True
    )
    batches = iter(loader)
    for _ in range(2 * workers):  # every worker started and one batch ahead
        next(batches)
    started = time.perf_counter()
    for _ in range(20):
        batch = next(batches)
    loader_ms = (time.perf_counter() - started) / 20 * 1000
    batch = {name: value.cuda() for name, value in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = task.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(one_step: Callable[[], None]) -> float:
        for _ in range(5):
            one_step()
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(20):
            one_step()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 20

    model_ms = timed(step)
    # The same step with the forward and backward replayed as a CUDA graph (TrainConfig.cuda_graphs).
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graph = StepGraph(
            functools.partial(task.compute_loss, model), batch, [p for p in model.parameters() if p.requires_grad]
        )

    def graphed_step() -> None:
        graph(batch)
        optimizer.step()

    graphed_ms = timed(graphed_step)
    return {
        "run": run.name,
        "batch_size": run.batch_size,
        "model_step_ms": round(model_ms, 2),
        "cuda_graph_step_ms": round(graphed_ms, 2),
        "loader_ms_per_batch": round(loader_ms, 2),
        "workers": workers,
        "configured_steps": run.steps,
        "configured_seconds_at_the_slower": round(run.steps * max(model_ms, loader_ms) / 1000, 1),
        "configured_seconds_with_graphs": round(run.steps * max(graphed_ms, loader_ms) / 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="gpu", choices=sorted(bench.TIERS))
    parser.add_argument("--runs", default="all", help="all, or comma-separated run names (task--model)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/capabilities_step_profile.json"))
    args = parser.parse_args()
    runs = bench.TIERS[args.tier][0]
    if args.runs != "all":
        names = args.runs.split(",")
        runs = tuple(run for run in runs if run.name in names)
    results = []
    for run in runs:
        results.append(profile(run, args.workers))
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    environment = bench._environment("cuda", 1)
    args.out.write_text(json.dumps({"environment": environment, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
