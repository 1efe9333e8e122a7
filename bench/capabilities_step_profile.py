"""Where a capability-suite training step's time goes on the GPU: the model's forward + backward + AdamW on a
fixed batch (CUDA-event timed), beside how fast the data loader makes batches, for one tier run.

    python bench/capabilities_step_profile.py --run selective-copying--mamba [--tier gpu] [--workers 8]"""

from __future__ import annotations

import argparse
import time

import torch
from mambakit.apps.synthetic import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="selective-copying--mamba")
    parser.add_argument("--tier", default="gpu", choices=sorted(bench.TIERS))
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    from mambakit.apps.synthetic.cli import DOMAIN, SyntheticOptions

    from mambakit.domains import RunOptions, TaskInputs

    run = next(r for r in bench.TIERS[args.tier][0] if r.name == args.run)
    spec = DOMAIN.task(run.task)
    options = SyntheticOptions(family=run.family, positions=run.positions, **run.task_sizes, **run.options)
    inputs = TaskInputs(RunOptions(task=run.task, model=dict(run.sizes)), options, None, DOMAIN.presets)
    splits = spec.data(inputs)
    model = spec.model(inputs, splits).cuda()
    task = spec.task(inputs)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_size=run.batch_size, collate_fn=task.collate, num_workers=args.workers
    )
    batches = iter(loader)
    next(batches)
    started = time.perf_counter()
    for _ in range(20):
        batch = next(batches)
    loader_ms = (time.perf_counter() - started) / 20 * 1000
    batch = {k: v.cuda() for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = task.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(20):
        step()
    end.record()
    torch.cuda.synchronize()
    print(
        f"{args.run}: model step {begin.elapsed_time(end) / 20:.1f} ms, loader {loader_ms:.1f} ms per batch "
        f"of {run.batch_size} with {args.workers} workers ({torch.cuda.get_device_name()})"
    )


if __name__ == "__main__":
    main()
