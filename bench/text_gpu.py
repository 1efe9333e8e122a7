"""Training tokens/s of `mambakit train text` (the whole CLI path: corpus, windows, loader, trainer) beside the
core's own LM training-step benchmark (`gpu_model.bench_lm_train`: one fixed batch already on the GPU) with the
same model, and mamba-ssm's model where it is installed, in one run on one GPU (#13: the CLI path must not lose
more than 5% to data loading and the trainer).

    python bench/text_gpu.py [--preset base] [--batch-size 8] [--seq-len 2048] [--steps 120] [--out DIR] [--commit SHA]

The CLI's tokens/s is the median of the trainer's logged windows (every 10 steps) after the first two (start-up,
kernel compilation); the run trains on the default corpus (bytes) with its defaults (AdamW, warm-up, clipping at
1.0, bf16 autocast). Writes DIR/text_gpu.json and .md (DIR: bench/results)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).parent))
import report  # beside this script
from gpu_model import GRAPHED, GRAPHED_SUFFIX, bench_lm_train
from host_waits import recorded_host_waits, waits_lines
from mambakit.apps.text.cli import DOMAIN, TextOptions

from mambakit.cli_support import train_domain
from mambakit.domains import RunOptions
from mambakit.models import load_model
from mambakit.ops import resolve_backend
from mambakit.ops.measured import layer_scan_shape, measurements


def cli_tokens_per_second(args: argparse.Namespace, cuda_graphs: bool = False) -> tuple[float, list[float], Any]:
    """(median tokens/s of the CLI run's logged windows after the first two, all of them, the trained config);
    `cuda_graphs`: the run with `--cuda-graphs`."""
    shutil.rmtree(args.work, ignore_errors=True)
    run = RunOptions(
        task="lm",
        out=args.work,
        max_steps=args.steps,
        batch_size=args.batch_size,
        device="cuda",
        preset=args.preset,
        train={"eval_every": args.steps, "save_every": args.steps, "log_every": 10, "cuda_graphs": cuda_graphs},
    )
    started = time.perf_counter()
    train_domain(DOMAIN, run, TextOptions(seq_len=args.seq_len))
    report.log(f"train text (cuda graphs {cuda_graphs}): {args.steps} steps in {time.perf_counter() - started:.0f} s")
    logged = [json.loads(line) for line in (args.work / "metrics.jsonl").read_text().splitlines()]
    windows = [record["tokens_per_s"] for record in logged if "tokens_per_s" in record]
    config = load_model(args.work / "last").config
    return statistics.median(windows[2:]), windows, config


def profile_cli(args: argparse.Namespace) -> None:
    """The CLI run once more under torch.profiler: steps 21 .. 20 + --profile-steps recorded; writes
    DIR/text_gpu_profile.txt with the wall time per step, the GPU's busy time per step (the kernels' own time) and
    the ops that take most GPU and most host time."""
    import mambakit.train as train_package

    wall: list[float] = []
    waits_scope = contextlib.ExitStack()
    waits: collections.Counter[str] = collections.Counter()  # step 21's
    schedule = torch.profiler.schedule(wait=20, warmup=0, active=args.profile_steps, repeat=1)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities, schedule=schedule) as profiler:

        def on_step(info: Any) -> None:
            nonlocal waits
            torch.cuda.synchronize()
            wall.append(time.perf_counter())
            profiler.step()
            if len(wall) == 20:  # the first profiled step: what makes its host wait for the GPU, too
                waits = waits_scope.enter_context(recorded_host_waits(frames=6))
            elif len(wall) == 21:
                waits_scope.close()

        fit = train_package.fit
        train_package.fit = functools.partial(fit, callbacks=[on_step])
        try:
            # One step past the recorded ones: the run's closing evaluation and checkpoints (at its last step) stay
            # out of the profile. Inside it, at 006c84b, they were its 978 device-to-host copies (the weights and
            # the optimizer's moments, saved to last/ and best/) and its mamba-ssm forward scans (evaluation).
            cli_tokens_per_second(argparse.Namespace(**{**vars(args), "steps": 20 + args.profile_steps + 1}))
        finally:
            train_package.fit = fit
    averages = profiler.key_averages()
    steps = args.profile_steps
    # The device's own events (kernels, copies, memsets): host-side ops carry their kernels' time too.
    busy_ms = sum(event.self_device_time_total for event in averages if event.device_type == DeviceType.CUDA)
    busy_ms /= 1000 * steps
    wall_ms = (wall[19 + steps] - wall[19]) * 1000 / steps
    lines = [
        f"wall {wall_ms:.1f} ms per step, GPU busy {busy_ms:.1f} ms per step ({busy_ms / wall_ms:.0%})",
        averages.table(sort_by="self_device_time_total", row_limit=25),
        averages.table(sort_by="self_cpu_time_total", row_limit=25),
        "the scan backends `auto` measured in this process (device, op, shape -> chosen, ms per candidate):",
        *(f"  {key[1]} {key[2]} -> {m.chosen} {m.milliseconds}" for key, m in measurements().items()),
        "what made the host wait for the GPU in step 21, by Python stack:",
        *waits_lines(waits),
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "text_gpu_profile.txt").write_text("\n".join(lines))
    report.log(lines[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help="the text app's preset (base: the 130M layout)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-text-gpu"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--commit", default="")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="then profile this many steps of the CLI run (after 20) and write where its time goes to DIR",
    )
    args = parser.parse_args()

    cli, windows, config = cli_tokens_per_second(args)
    graphed_cli, graphed_windows, _ = cli_tokens_per_second(args, cuda_graphs=True)
    if args.profile_steps:
        profile_cli(args)
    core_rows = bench_lm_train(batch=args.batch_size, length=args.seq_len, steps=10, warmup=3, config=config)
    by_backend = {row["backend"]: row for row in core_rows}
    # The CLI's scan backend is what `auto` measured fastest at its layers' shape in this process: compare like with
    # like, the core step on that backend.
    layers = layer_scan_shape(args.batch_size, config.d_inner, args.seq_len, config.d_state, torch.bfloat16)
    picked = resolve_backend("auto", torch.device("cuda"), "selective_scan", shape=layers).name
    core_label = next(
        (name for name in by_backend if name.startswith("mambakit[auto") and not name.endswith(GRAPHED_SUFFIX)),
        f"mambakit[{picked}]" if f"mambakit[{picked}]" in by_backend else "mambakit[triton]",
    )
    core = by_backend[core_label]["value"]
    graphed_core = by_backend[GRAPHED]["value"]
    data = {
        "machine": report.gpu_machine(),
        "mamba_ssm": report.version("mamba_ssm"),
        "commit": report.git_commit(args.commit),
        "date": report.now(),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "model": {"d_model": config.d_model, "n_layer": config.n_layer, "vocab_size": config.vocab_size},
        "cli_tokens_per_s": cli,
        "cli_windows": windows,
        "core": core_rows,
        "cli_scan_backend": picked,
        "core_compared": core_label,
        "cli_over_core": cli / core if core else None,
        "cli_cuda_graphs_tokens_per_s": graphed_cli,
        "cli_cuda_graphs_windows": graphed_windows,
        "cli_cuda_graphs_over_core": graphed_cli / graphed_core if graphed_core else None,
    }
    shape = f"B{args.batch_size} L{args.seq_len}, d_model {config.d_model}, {config.n_layer} layers"
    shape += f", vocab {config.vocab_size}"
    lines = [
        f"# `train text` tokens/s beside the core LM step ({data['machine']['device']}, commit {data['commit']})",
        "",
        ", ".join(f"{key} {value}" for key, value in data["machine"].items()) + f", mamba-ssm {data['mamba_ssm']}",
        "",
        f"{shape}; AdamW, bf16 autocast, fp32 parameters. The core rows time one fixed batch already on the GPU "
        "(do_bench-style CUDA events); the CLI row is the trainer's own tokens/s (median of 10-step windows after "
        "the first two) on the default corpus.",
        "",
        "| what | tokens/s | note |",
        "|---|---|---|",
        f"| mambakit train text (CLI; auto picked {picked}) | {cli:,.0f} | {cli / core:.1%} of the core step "
        f"{core_label} (goal: at least 95%) |",
        f"| mambakit train text --cuda-graphs (CLI) | {graphed_cli:,.0f} | "
        + (f"{graphed_cli / graphed_core:.1%} of the core step {GRAPHED} |" if graphed_core else "|"),
    ]
    for row in core_rows:
        value = "n/a" if row["value"] is None else f"{row['value']:,.0f}"
        lines.append(f"| core LM step, {row['backend']} | {value} | {row['note'] or ''} |")
    report.write(args.out, "text_gpu", data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
