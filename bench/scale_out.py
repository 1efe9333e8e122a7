"""Data-parallel scaling of `mambakit train text` and `mambakit train vision` (issue #16): throughput on N processes
beside 1 process in the same session, with DDP and with FSDP2, through the real CLI under torchrun.

    python bench/scale_out.py [--preset gpu|cpu] [--nproc 1,2] [--wrappers ddp,fsdp] [--domains text,vision]
        [--grad-accum-steps 1] [--out bench/results] [--work runs/scale_out] [--commit SHA]

Each run is `python -m torch.distributed.run --standalone --nproc-per-node N -m mambakit train DOMAIN ...` with a
--config that picks the wrapper (`train: {distributed: ddp|fsdp}`) and logs every step; NCCL on GPUs, gloo on the
CPU (mambakit.train.distributed chooses by device). The speed is read from the run's own metrics.jsonl: the trainer
logs, for every step, the tokens it counted over all processes per second (`tokens_per_s`: predicted positions for
the LM, images for the classifier), timed from the data loader's batch to the optimizer step. The first steps
(start-up, kernel compilation) and the first step of each later epoch (the data loader starting again) are left out;
every step counts the same examples, so the rest gives examples/s exactly. `--batch-size` is per process, so N
processes train N times the examples per step: scaling = throughput on N / throughput on 1 (the goal on GPUs:
at least 1.9 on 2). One process trains unwrapped whatever the wrapper, so its run is the baseline of both.

Presets: `gpu` (the issue's sizes: the text app's `base` preset, the 130M layout, at 2048 tokens; vmamba_tiny_s1l8
at 224 x 224 on the embedded images; each run well under two minutes on an H100) and `cpu` (tiny models that check
the pipeline on a CPU with gloo in well under a minute a run; not a measure of scaling). Writes
OUT/scale_out_<commit>.json and .md (`scale_out_<preset>_<commit>` for other presets than gpu). A failed run is
recorded with the end of its output, the others still measured, and the script then exits with status 1.

On the GPU machine (no .git there: pass the commit; mambakit must be installed for the CLI to find its apps):

    ln -sfn $PWD/apps mambakit/apps; pip install -q --no-deps --no-build-isolation -e .
    python bench/scale_out.py --commit SHA --domains text   # then --domains vision: each call stays under 10 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import report

WRAPPERS = ("ddp", "fsdp")
#: A launch that outlives this is stopped and recorded as failed (a collective waiting forever, say).
DEFAULT_TIMEOUT_S = 300
#: NVLink multicast (NVLS) can put a shared host's GPUs out of service for a day or more; the lent GPU machines keep
#: it off with these, and every run started here keeps them unless the caller's environment says otherwise.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: What the trainer's wrappers do about communication (mambakit.train.distributed), recorded with the numbers.
COMMUNICATION = (
    "DDP: torch's defaults (gradients all-reduced in 25 MB buckets, the first 1 MB, each as soon as its gradients are "
    "ready in the backward, so communication overlaps the backward), under gradient accumulation no_sync on every "
    "micro-batch but the last. FSDP2: fully_shard on each residual block (shard_units) and the root, torch's defaults "
    "(parameters gathered ahead of use, resharded after the forward, gradients reduce-scattered per block), under "
    "accumulation set_requires_gradient_sync(False) on every micro-batch but the last. DDP's bucket size is not a "
    "mambakit setting."
)


@dataclass(frozen=True)
class Workload:
    """One domain's training run at one preset: what `mambakit train DOMAIN` is given, and how its logged speed
    reads as examples."""

    domain: str
    model: str
    """The model and sizes, as the report names them."""
    device: str
    """"cuda" (one GPU a process, NCCL) or "cpu" (gloo)."""
    options: tuple[str, ...]
    """The train command's options that pick the model, data and sizes."""
    batch_size: int
    """Examples per micro-batch on each process."""
    steps: int
    skip_steps: int
    """Steps left out at the start: process start-up, autotuning and compilation happen in them."""
    num_workers: int
    """DataLoader workers of each process."""
    unit: str
    """What the throughput counts: "tokens" or "images"."""
    units_per_example: int
    """Tokens in a text window (the sequence length), or 1 image."""
    counted_per_example: int
    """What the trainer's tokens_per_s counts in one example: the LM's predicted positions (sequence length - 1), or
    the classifier's 1 image."""


def _text(model: str, device: str, options: tuple[str, ...], seq_len: int, **sizes: int) -> Workload:
    return Workload(
        "text",
        model,
        device,
        (*options, "--seq-len", str(seq_len)),
        **sizes,
        unit="tokens",
        units_per_example=seq_len,
        counted_per_example=seq_len - 1,
    )


def _vision(model: str, device: str, img_size: int, **sizes: int) -> Workload:
    return Workload(
        "vision",
        f"{model} at {img_size} x {img_size}, embedded images",
        device,
        ("--model", model, "--img-size", str(img_size)),
        **sizes,
        unit="images",
        units_per_example=1,
        counted_per_example=1,
    )


#: A small real text for the CPU preset: the json package's sources (a few files of every Python's standard library),
#: so a run does not spend its minute encoding the app's default corpus.
_CPU_CORPUS = str(Path(sysconfig.get_paths()["stdlib"]) / "json")

PRESETS: dict[str, dict[str, Workload]] = {
    "gpu": {
        # 80 steps: an epoch of the default corpus is 87 steps on 2 processes, so no data-loader restart.
        "text": _text(
            "text --preset base (the 130M layout: d_model 768, 24 layers), bytes, default corpus",
            "cuda",
            ("--preset", "base"),
            seq_len=2048,
            batch_size=8,
            steps=80,
            skip_steps=10,
            num_workers=0,
        ),
        # Batch 128 a GPU as in VMamba's recipe and bench/vision.py; workers decode and upscale the 28 x 28 images.
        "vision": _vision(
            "vmamba_tiny_s1l8", "cuda", img_size=224, batch_size=128, steps=80, skip_steps=10, num_workers=6
        ),
    },
    "cpu": {
        "text": _text(
            "text --preset tiny (d_model 128, 2 layers), bytes, the standard library's json package",
            "cpu",
            ("--preset", "tiny", "--data", _CPU_CORPUS),
            seq_len=64,
            batch_size=8,
            steps=16,
            skip_steps=4,
            num_workers=0,
        ),
        "vision": _vision("test_vmamba", "cpu", img_size=28, batch_size=16, steps=16, skip_steps=4, num_workers=0),
    },
}


class RunFailed(RuntimeError):
    """A launch that exited non-zero, ran past its time, or logged too few steps to measure."""


def child_environment(device: str) -> dict[str, str]:
    """This environment for the launches on `device` (NCCL_* and the rest as they are), with the repository first on
    PYTHONPATH and NVLink multicast off unless already set; on the CPU one thread a process unless OMP_NUM_THREADS
    says otherwise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(report.ROOT), env.get("PYTHONPATH", "")]))
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)
    if device == "cpu":
        # N processes then use N cores, as N processes use N GPUs (torchrun does this only for N > 1); and a lone
        # process's threads do not stall on each other when something else holds a core of a shared machine.
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def train_command(workload: Workload, processes: int, config: Path, out: Path) -> list[str]:
    """The torchrun line that trains `workload` on `processes` processes into `out`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    sizes = ["--device", workload.device, "--batch-size", str(workload.batch_size), "--max-steps", str(workload.steps)]
    return [
        *launcher,
        "-m",
        "mambakit",
        "train",
        workload.domain,
        *workload.options,
        *sizes,
        "--config",
        str(config),
        "--out",
        str(out),
    ]


def run_config(workload: Workload, wrapper: str, grad_accum_steps: int) -> str:
    """The --config file's text: the wrapper, a metrics record every step, evaluation and checkpoints only at the
    end (outside the timed steps anyway, but they would lengthen the run)."""
    train = {
        "distributed": wrapper,
        "grad_accum_steps": grad_accum_steps,
        "num_workers": workload.num_workers,
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
    }
    return json.dumps({"train": train}, indent=2) + "\n"  # JSON is YAML too


def launch(command: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> float:
    """Run `command` with its output in `log_path`; its wall seconds. A launch still running after `timeout_s` is
    stopped the way torchrun stops (SIGTERM, which it passes on to its workers) and raises RunFailed, as does a
    non-zero exit; the message ends with the output's last lines."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=report.ROOT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop(process)
            raise RunFailed(f"ran past {timeout_s:.0f} s; the end of {log_path}:\n{_tail(log_path)}") from None
    if process.returncode != 0:
        raise RunFailed(f"exit code {process.returncode}; the end of {log_path}:\n{_tail(log_path)}")
    return time.perf_counter() - started


def stop(process: subprocess.Popen, grace_s: float = 60) -> None:
    """Stop a torchrun launcher the way torchrun stops: SIGTERM, which it passes on to its workers, then SIGKILL if
    it outlives `grace_s`."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def throughput(metrics: Path, workload: Workload, processes: int, grad_accum_steps: int) -> dict[str, Any]:
    """examples/s (and tokens or images/s) of a run from its metrics.jsonl, one train record a step, leaving out the
    first `workload.skip_steps` steps and the first step of each later epoch (its data loader starts anew).

    Every step trains the same examples (full windows or images, the last incomplete batch of an epoch dropped), so
    the step's seconds are its counted units over its logged rate, and the run's rate is the measured steps'
    examples over the sum of their seconds."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [record for record in records if "tokens_per_s" in record]
    if len(steps) != workload.steps:
        raise RunFailed(f"{metrics}: {len(steps)} step records, expected {workload.steps}")
    examples_per_step = workload.batch_size * grad_accum_steps * processes
    counted_per_step = examples_per_step * workload.counted_per_example
    step_seconds, restarts, epoch = [], 0, 0
    loader_starts = False
    for record in steps:
        if record["step"] > workload.skip_steps:
            if loader_starts:
                restarts += 1
            else:
                step_seconds.append(counted_per_step / record["tokens_per_s"])
        loader_starts, epoch = record["epoch"] != epoch, record["epoch"]  # that step ended an epoch
    if not step_seconds:
        raise RunFailed(f"{metrics}: no step left to measure after the first {workload.skip_steps}")
    examples_per_s = len(step_seconds) * examples_per_step / sum(step_seconds)
    return {
        "examples_per_s": examples_per_s,
        f"{workload.unit}_per_s": examples_per_s * workload.units_per_example,
        "step_ms_median": 1000 * statistics.median(step_seconds),
        "step_ms_min": 1000 * min(step_seconds),
        "step_ms_max": 1000 * max(step_seconds),
        "measured_steps": len(step_seconds),
        "left_out_steps": {"start": workload.skip_steps, "data_loader_restarts": restarts},
        "examples_per_step": examples_per_step,
    }


def measure(
    workloads: dict[str, Workload],
    nprocs: list[int],
    wrappers: list[str],
    work: Path,
    grad_accum_steps: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Train each workload on each number of processes with each wrapper (once on 1 process: it runs unwrapped)
    and read their throughput; {"runs": one record each, "scaling": throughput on N / on 1 per domain and wrapper}.
    A failed run's record holds its "error" instead of numbers. Run folders go under `work`, made afresh."""
    runs = []
    for domain, workload in workloads.items():
        env = child_environment(workload.device)
        for processes in nprocs:
            for wrapper in wrappers if processes > 1 else [None]:
                name = f"{domain}-n{processes}" + (f"-{wrapper}" if wrapper else "")
                folder = work / name
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                config = folder / "config.yaml"
                config.write_text(run_config(workload, wrapper or "ddp", grad_accum_steps))
                command = train_command(workload, processes, config, folder / "run")
                run: dict[str, Any] = {
                    "domain": domain,
                    "processes": processes,
                    "wrapper": wrapper,
                    "command": shlex.join(command),
                    "config": json.loads(config.read_text()),
                }
                report.log(f"$ {run['command']}")
                try:
                    run["wall_s"] = launch(command, env, folder / "launch.log", timeout_s)
                    run.update(throughput(folder / "run" / "metrics.jsonl", workload, processes, grad_accum_steps))
                    report.log(
                        f"{name}: {run['examples_per_s']:,.1f} examples/s, {run[f'{workload.unit}_per_s']:,.0f} "
                        f"{workload.unit}/s, {run['step_ms_median']:.1f} ms a step (median); {run['wall_s']:.0f} s"
                    )
                except RunFailed as error:
                    run["error"] = str(error)
                    report.log(f"{name}: FAILED, {error}")
                runs.append(run)
    return {"runs": runs, "scaling": scaling(runs)}


def scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per domain, wrapper and number of processes above 1: examples/s over the 1-process run's (None where either
    run failed or no 1-process run was made)."""
    single = {run["domain"]: run.get("examples_per_s") for run in runs if run["processes"] == 1}
    rows = []
    for run in runs:
        if run["processes"] == 1:
            continue
        base, value = single.get(run["domain"]), run.get("examples_per_s")
        rows.append(
            {
                "domain": run["domain"],
                "wrapper": run["wrapper"],
                "processes": run["processes"],
                "ratio": value / base if value and base else None,
            }
        )
    return rows


def machine(device: str) -> dict[str, Any]:
    """The device and versions: the GPUs' name and count, or the CPU's name and cores."""
    import torch

    if device == "cuda":
        return {**report.gpu_machine(), "gpus": torch.cuda.device_count()}
    return {
        "device": f"{report.cpu_name()} ({os.cpu_count()} cores)",
        "torch": report.version("torch"),
        "python": platform.python_version(),
        "date": report.now(),
    }


def check_apps(domains: list[str]) -> None:
    """Exit with a one-line message when the CLI would not find a domain: the apps register as entry points of the
    installed package."""
    registered = {entry.name for entry in entry_points(group="mambakit.apps")}
    missing = [domain for domain in domains if domain not in registered]
    if missing:
        raise SystemExit(
            f"the mambakit apps {', '.join(missing)} are not installed here, so `mambakit train` would not find them: "
            f"pip install --no-deps --no-build-isolation -e . (from the repository)"
        )


def markdown(data: dict[str, Any]) -> str:
    """The report: one row a run, its scaling beside it, then the commands and the settings."""
    workloads, gpu = data["workloads"], data["preset"] == "gpu"
    ratios = {(row["domain"], row["wrapper"], row["processes"]): row["ratio"] for row in data["scaling"]}
    title = (
        "Data-parallel scaling" if gpu else f"Scale-out pipeline check, preset {data['preset']} (not a scaling claim)"
    )
    lines = [
        f"# {title}: {data['machine']['device']} (commit {data['commit']})",
        "",
        ", ".join(f"{key} {value}" for key, value in data["machine"].items() if key != "device")
        + f"; {data['backend']}, grad_accum_steps {data['grad_accum_steps']}.",
        "",
    ]
    if not gpu:
        lines += [
            "Tiny models on a shared CPU: this checks that the benchmark runs end to end (torchrun, the CLI, both "
            "wrappers, the metrics it reads); its numbers say nothing about scaling on GPUs. Each process computes "
            f"on one thread (OMP_NUM_THREADS={data['environment'].get('OMP_NUM_THREADS', 'unset')}), so N processes "
            "use N cores.",
            "",
        ]
    lines += [
        "| domain | wrapper | processes | examples/s | tokens or images/s | ms a step (median) | vs 1 process |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in data["runs"]:
        workload = workloads[run["domain"]]
        wrapper = run["wrapper"] or "none (1 process)"
        if "error" in run:
            first_line = run["error"].splitlines()[0]
            lines.append(f"| {run['domain']} | {wrapper} | {run['processes']} | failed: {first_line} | | | |")
            continue
        ratio = ratios.get((run["domain"], run["wrapper"], run["processes"]))
        versus = "1 (baseline)" if run["processes"] == 1 else ("n/a" if ratio is None else f"{ratio:.2f}x")
        if gpu and ratio is not None:
            versus += " (goal 1.9x)" if run["processes"] == 2 else ""
        lines.append(
            f"| {run['domain']} | {wrapper} | {run['processes']} | "
            f"{run['examples_per_s']:,.1f} | {run[workload['unit'] + '_per_s']:,.0f} {workload['unit']} | "
            f"{run['step_ms_median']:.1f} | {versus} |"
        )
    lines += ["", "Models and sizes (batch: per process and micro-batch):"]
    for domain, workload in workloads.items():
        lines.append(
            f"- {domain}: {workload['model']}, batch {workload['batch_size']}, {workload['steps']} steps of which "
            f"the first {workload['skip_steps']} (and the first of each later epoch) are left out, "
            f"{workload['num_workers']} data-loader workers"
        )
    lines += [
        "",
        "Throughput is read from each run's metrics.jsonl (the trainer's per-step `tokens_per_s`, timed from the "
        "data loader's batch to the optimizer step; evaluation and checkpoints are outside it); tokens/s = examples/s "
        "x sequence length.",
        "",
        f"Communication: {data['communication']}",
        "",
        "Commands:",
        "",
        *(f"    {run['command']}" for run in data["runs"]),
    ]
    return "\n".join(lines)


def _names(text: str, choices: tuple[str, ...]) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
    return names


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give process counts such as 1,2")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--nproc", type=_counts, default=[1, 2], help="numbers of processes, e.g. 1,2")
    parser.add_argument("--wrappers", type=lambda text: _names(text, WRAPPERS), default=list(WRAPPERS))
    parser.add_argument("--domains", type=lambda text: _names(text, ("text", "vision")), default=["text", "vision"])
    parser.add_argument("--grad-accum-steps", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per launch")
    parser.add_argument("--work", type=Path, default=report.ROOT / "runs" / "scale_out", help="run folders")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    parser.add_argument("--commit", default="", help="the commit measured (the GPU machine's copy has no .git)")
    args = parser.parse_args()

    workloads = {domain: PRESETS[args.preset][domain] for domain in args.domains}
    device = PRESETS[args.preset]["text"].device
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < max(args.nproc):
            raise SystemExit(f"--nproc {max(args.nproc)} needs as many GPUs; {torch.cuda.device_count()} visible")
    check_apps(args.domains)
    measured = measure(workloads, args.nproc, args.wrappers, args.work, args.grad_accum_steps, args.timeout_s)
    env = child_environment(device)
    data = {
        "preset": args.preset,
        "machine": machine(device),
        "commit": report.git_commit(args.commit),
        "backend": "nccl" if device == "cuda" else "gloo",
        "grad_accum_steps": args.grad_accum_steps,
        "nproc": args.nproc,
        "wrappers": args.wrappers,
        "workloads": {domain: asdict(workload) for domain, workload in workloads.items()},
        "environment": {
            name: env[name]
            for name in sorted(env)
            if name.startswith(("NCCL_", "TORCH_NCCL_")) or name in {*MULTICAST_OFF, "OMP_NUM_THREADS"}
        },
        "communication": COMMUNICATION,
        **measured,
    }
    name = "scale_out_" + ("" if args.preset == "gpu" else f"{args.preset}_") + data["commit"]
    report.write(args.out, name, data, markdown(data))
    for row in data["scaling"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        report.log(f"{row['domain']} {row['wrapper']} on {row['processes']} processes: {ratio} of 1 process")
    report.log(f"wrote {args.out / name}.json and .md")
    if any("error" in run for run in data["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
