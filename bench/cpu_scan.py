"""CPU benchmark of the selective scan, forward + backward, fp32: mambakit's `torch` and `reference` backends
against the two pure-PyTorch scans people use on a CPU today, Hugging Face transformers' slow path and
mambapy's parallel scan.

    PYTHONPATH=. .venv/bin/python bench/cpu_scan.py            # all methods, both shapes (~15 min on 2 cores)
    PYTHONPATH=. .venv/bin/python bench/cpu_scan.py --shapes 4,256,16,1024 --methods mambakit_torch,mambapy

Every method computes the same function, Mamba's real usage: out = selective_scan(u, delta, A, B, C, D, z,
delta_bias, delta_softplus=True) with B, C of shape (batch, N, L), checked first against a float64 oracle.
What is timed is the scan only: no in_proj, convolution or x_proj around it.

  mambakit_torch      mambakit.ops.selective_scan(..., backend="torch"): chunked scan, hand-written backward.
  mambakit_reference  mambakit.ops.selective_scan(..., backend="reference"): a Python loop over time steps.
  hf_slow             transformers.models.mamba.modeling_mamba.mamba_selective_scan, the function MambaMixer
                      calls for the scan; without mamba-ssm (or hub kernels) installed, it is transformers' own
                      PyTorch fallback, called here with MambaConfig's defaults (use_mambapy=False; the
                      associative scan is only used under torch.compile), i.e. its Python loop over L.
  mambapy             mambapy 1.2's MambaBlock.selective_scan (pscan, Blelloch parallel scan) with the softplus
                      before it and the silu(z) gate after it exactly as MambaBlock.ssm/forward do on a CPU,
                      on inputs in mambapy's own (batch, L, dim) layout.

Each (method, shape) runs in a fresh subprocess: the first forward+backward is a warm-up, then the median of
a few more (a method whose first run takes longer than --slow-s is measured by that one run, where one-time
costs are negligible). Peak memory is the child's peak RSS (VmHWM, reset after set-up where the kernel allows)
minus its RSS after imports, a tiny warm-up and input creation (ru_maxrss would not do: it keeps the parent's
RSS across fork and exec); "autograd saved" is torch's own count of the distinct storages kept for the
backward. A run longer than its time limit is killed and reported as "timeout > N s", with the forward time if
it got that far.
The machine may be shared: each measurement first waits (a minute at most) for other processes to go quiet,
the CPU time they use during it is recorded ("other load", in cores), short measurements taken under load are
repeated (--retries, if they lasted at most 150 s) and the rest are flagged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).parent))
from report import RESULTS, ROOT, cpu_name, git_commit, has_uncommitted_changes, now, version, write

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

METHODS = ["mambakit_torch", "mambakit_reference", "hf_slow", "mambapy"]
SHAPES = [(4, 256, 16, 1024), (1, 512, 16, 8192)]  # (batch, dim, N, L)
CHECK_SHAPE = (2, 16, 4, 37)  # crosses chunk boundaries; not a power of two, so mambapy pads
CONTENDED = 0.25  # other processes' average CPU use, in cores, above which a measurement is flagged


# ----------------------------------------------------------------------------------------------- methods


def make_inputs(
    batch: int, dim: int, d_state: int, length: int, dtype: torch.dtype | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """mambakit.ops.timing.scan_inputs drawn in float64 (u, delta the raw projection output, B, C, D, z), with A
    and delta_bias in the ranges a Mamba layer starts from: A in [-16, -1] like S4D-real, delta_bias the inverse
    softplus of a time step drawn log-uniformly in [1e-3, 1e-1] (Mamba's initialisation). Returns every input
    rounded to `dtype` (default fp32) as a leaf that requires grad, in mamba-ssm layout, as a dict."""
    import torch

    from mambakit.ops.timing import scan_inputs

    inputs = scan_inputs(batch, dim, d_state, length, "cpu", torch.float64, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    dt = torch.exp(math.log(1e-3) + torch.rand(dim, generator=g, dtype=torch.float64) * math.log(100.0))
    inputs["A"] = -torch.exp(torch.rand(dim, d_state, generator=g, dtype=torch.float64) * math.log(16.0))
    inputs["delta_bias"] = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    return {name: x.to(dtype or torch.float32).requires_grad_() for name, x in inputs.items()}


def mambapy_scan(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    delta_bias: torch.Tensor,
) -> torch.Tensor:
    """mambapy 1.2 on a CPU: the lines of MambaBlock.ssm and MambaBlock.forward (mambapy/mamba.py) around the
    scan, calling its own MambaBlock.selective_scan (which does not use `self`). Layout (batch, L, dim) for
    x, delta, z and (batch, L, N) for B, C, as mambapy's model produces them."""
    import torch.nn.functional as F
    from mambapy.mamba import MambaBlock

    delta = F.softplus(delta + delta_bias)  # MambaBlock.ssm, config.use_cuda False
    y = MambaBlock.selective_scan(None, x, delta, A, B, C, D)  # deltaA, BX, pscan, hs @ C, + D*x
    return y * F.silu(z)  # MambaBlock.forward: z = silu(z); output = y * z


class Method:
    """One benchmarked implementation: `prepare` turns mamba-ssm-layout leaves into its own leaves (outside the
    timing), `run` computes out, `to_common` maps out and gradients back to mamba-ssm layout for the check."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.note = ""
        import torch  # noqa: F401 - imported here so that every child pays the same import before measuring

        if name.startswith("mambakit"):
            import mambakit.ops as ops

            self.backend = name.split("_", 1)[1]
            self.ops = ops
        elif name == "hf_slow":
            import importlib.util

            import transformers
            from transformers.models.mamba import modeling_mamba

            fast = [p for p in ("mamba_ssm", "kernels") if importlib.util.find_spec(p) is not None]
            if fast:
                raise RuntimeError(f"{fast} installed: transformers would not run its slow path")
            self.fn = modeling_mamba.mamba_selective_scan
            self.note = f"transformers {transformers.__version__} mamba_selective_scan, PyTorch fallback"
        elif name == "mambapy":
            import mambapy.mamba  # noqa: F401

    def prepare(self, leaves: dict) -> dict:
        if self.name != "mambapy":
            return leaves
        # mambapy's layout: (batch, L, ...) contiguous, the same values.
        out = {}
        for key, x in leaves.items():
            x = x.detach()
            if x.dim() == 3:
                x = x.transpose(1, 2).contiguous()
            out[key] = x.requires_grad_()
        return out

    def run(self, x: dict) -> torch.Tensor:
        if self.name.startswith("mambakit"):
            return self.ops.selective_scan(
                x["u"],
                x["delta"],
                x["A"],
                x["B"],
                x["C"],
                x["D"],
                x["z"],
                x["delta_bias"],
                True,
                backend=self.backend,
            )
        if self.name == "hf_slow":
            # MambaMixer.forward's call, with MambaConfig's defaults for the two switches.
            return self.fn(
                x["u"],
                x["delta"],
                x["A"],
                x["B"],
                x["C"],
                D=x["D"],
                z=x["z"],
                delta_bias=x["delta_bias"],
                delta_softplus=True,
                return_last_state=False,
                use_mambapy=False,
                use_associative_scan=True,
            )
        return mambapy_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])

    def to_common(self, t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2) if self.name == "mambapy" and t.dim() == 3 else t


# ------------------------------------------------------------------------------------------- correctness


def check_correctness() -> dict:
    """Relative error of every method's output and gradients, fp32, against the float64 reference."""
    import torch

    from mambakit.ops.reference import selective_scan_ref

    ref_in = make_inputs(*CHECK_SHAPE, dtype=torch.float64, seed=1)
    out_ref = selective_scan_ref(*ref_in.values(), delta_softplus=True)
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads_ref = torch.autograd.grad(out_ref, list(ref_in.values()), grad_out)
    results = {}
    for name in METHODS:
        method = Method(name)
        x = method.prepare({k: v.detach().float().requires_grad_() for k, v in ref_in.items()})
        out = method.run(x)
        grads = torch.autograd.grad(out, list(x.values()), method.prepare({"g": grad_out.float()})["g"])
        errors = {"out": (method.to_common(out).double(), out_ref)}
        errors.update({f"d{k}": (method.to_common(g).double(), r) for k, g, r in zip(x, grads, grads_ref, strict=True)})
        results[name] = {k: ((a - b).norm() / b.norm()).item() for k, (a, b) in errors.items()}
    return results


# --------------------------------------------------------------------------------------------- the child


def _status_mb(field: str, pid: int | str = "self") -> float | None:
    """VmRSS or VmHWM (peak RSS) of a process, in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS, so that set-up transients do not count (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _busy_cpu_s() -> float:
    """CPU seconds all processes on this machine spent busy (user+nice+system+irq+softirq+steal), from boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(method_name: str, shape: tuple[int, ...], reps: int, slow_s: float, budget_s: float) -> None:
    """Measure one (method, shape); reports go to stdout as JSON lines, flushed, so a killed run keeps them."""
    import torch

    def report(**event: object) -> None:
        print(json.dumps(event), flush=True)

    method = Method(method_name)
    # One tiny forward+backward first: the code pages of the shared libraries it touches count in RSS and
    # would otherwise be charged to the measured run (about 250 MB here, whatever the shape).
    tiny = method.prepare(make_inputs(*CHECK_SHAPE))
    torch.autograd.grad(method.run(tiny).sum(), list(tiny.values()))
    del tiny
    leaves = method.prepare(make_inputs(*shape))
    params = list(leaves.values())
    batch, dim, _, length = shape
    grad_out = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(3))
    grad_out = method.prepare({"g": grad_out})["g"].detach()
    _reset_peak_rss()
    report(event="setup", rss_mb=_status_mb("VmRSS"), threads=torch.get_num_threads(), note=method.note)

    def one_run(saved: dict | None = None) -> tuple[float, float]:
        t0 = time.perf_counter()
        if saved is None:
            out = method.run(leaves)
        else:

            def pack(t: torch.Tensor) -> torch.Tensor:
                storage = t.untyped_storage()
                saved[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = method.run(leaves)
        t1 = time.perf_counter()
        report(event="forward", seconds=t1 - t0)
        torch.autograd.grad(out, params, grad_out)
        return t1 - t0, time.perf_counter() - t0

    saved: dict[int, int] = {}
    busy0, own0, wall0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    report(event="start")
    forward, total = one_run(saved)
    report(event="warmup", forward=forward, total=total, saved_mb=sum(saved.values()) / 2**20)
    runs = [(forward, total)]
    if total <= slow_s:
        runs = []
        count = max(2, min(reps, int(budget_s / max(total, 1e-3))))
        for _ in range(count):
            runs.append(one_run())
    wall = time.perf_counter() - wall0
    other_load = max(0.0, (_busy_cpu_s() - busy0) - (_own_cpu_s() - own0)) / wall
    report(
        event="done",
        forward=[r[0] for r in runs],
        total=[r[1] for r in runs],
        other_load=other_load,
        peak_mb=_status_mb("VmHWM"),
        first_run_only=total > slow_s,
    )


# -------------------------------------------------------------------------------------------- the parent


def wait_for_quiet(max_s: float) -> float:
    """Wait, at most max_s, until other processes use less than CONTENDED cores over 2 s; returns that load."""
    deadline = time.monotonic() + max_s
    while True:
        busy, start = _busy_cpu_s(), time.monotonic()
        time.sleep(2)
        load = (_busy_cpu_s() - busy) / (time.monotonic() - start)
        if load < CONTENDED or time.monotonic() > deadline:
            return load


def run_child(method: str, shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter; enforce the time limit on the measured part."""
    limit = args.slow_limit_s if method in ("mambakit_reference", "hf_slow") else args.limit_s
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--shapes",
        ",".join(map(str, shape)),
        "--reps",
        str(args.reps),
        "--slow-s",
        str(args.slow_s),
        "--budget-s",
        str(args.budget_s),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    events: dict[str, dict] = {}
    started, timed_out, peak_at_kill = None, False, None
    setup_deadline = time.monotonic() + 300
    while True:
        try:
            event = json.loads(lines.get(timeout=0.5))
            events.setdefault(event["event"], event)
            if event["event"] == "start":
                started = time.monotonic()
        except queue.Empty:
            pass
        except json.JSONDecodeError:
            continue
        if proc.poll() is not None:
            if not reader.is_alive() and lines.empty():
                break
            continue
        now = time.monotonic()
        if not timed_out and (
            (started is not None and now - started > limit) or (started is None and now > setup_deadline)
        ):
            peak_at_kill = _status_mb("VmHWM", proc.pid)
            proc.kill()
            timed_out = True
    peak_mb = events["done"]["peak_mb"] if "done" in events else peak_at_kill
    setup = events.get("setup", {})
    result = {"method": method, "shape": list(shape), "limit_s": limit, "note": setup.get("note", "")}
    result["threads"] = setup.get("threads")
    if "setup" in events and peak_mb is not None:
        result["peak_rss_delta_mb"] = round(peak_mb - setup["rss_mb"], 1)
    if "warmup" in events:
        result["autograd_saved_mb"] = round(events["warmup"]["saved_mb"], 1)
    if "forward" in events:
        result["first_forward_s"] = events["forward"]["seconds"]
    if "done" in events:
        done = events["done"]
        result.update(
            status="ok",
            fwd_bwd_s=statistics.median(done["total"]),
            fwd_bwd_min_s=min(done["total"]),
            forward_s=statistics.median(done["forward"]),
            reps=len(done["total"]),
            first_run_only=done["first_run_only"],
            other_load=round(done["other_load"], 2),
        )
    elif timed_out:
        result["status"] = f"timeout > {limit:.0f} s"
    else:
        result["status"] = "error"
        result["stderr"] = "".join(stderr)[-2000:]
    return result


def machine_info() -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions.update({package: version(package) for package in ("transformers", "mambapy")})
    commit = git_commit()
    try:
        if commit and has_uncommitted_changes("mambakit"):
            commit += " + uncommitted changes in mambakit/"
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    versions["mambakit"] = commit or "unknown"
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "platform": platform.platform(),
    }


def fmt_s(r: dict) -> str:
    if r["status"] != "ok":
        fwd = f" (forward {r['first_forward_s']:.2f} s)" if "first_forward_s" in r else ""
        return r["status"] + fwd
    text = f"{r['fwd_bwd_s']:.3f}" if r["fwd_bwd_s"] < 10 else f"{r['fwd_bwd_s']:.1f}"
    return text + (" (1 run)" if r["first_run_only"] else f" (min {r['fwd_bwd_min_s']:.3f}, {r['reps']} runs)")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Selective scan on CPU: forward + backward, fp32",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; {m['platform']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Run {report['date']}, {report['total_minutes']:.1f} min. Command: `{report['command']}`.",
        "",
        "What is timed: the scan only (no in_proj/conv/x_proj), out = selective_scan(u, delta, A, B, C, D, z, "
        "delta_bias, delta_softplus=True), B and C (batch, N, L), then the gradient of out with respect to every "
        "input. HF is transformers' own `mamba_selective_scan` (the function MambaMixer calls) running its "
        "PyTorch fallback; mambapy is its `MambaBlock.selective_scan` (pscan) with softplus and gate as in its "
        "block. Times: median of the runs after a warm-up (a run longer than "
        f"{report['settings']['slow_s']:.0f} s is measured once). Peak memory: peak RSS of a fresh process minus "
        "its RSS after imports, a tiny warm-up and the inputs (so it includes the gradients and the output). "
        "Autograd saved: distinct storages kept for the backward. Other load: cores used by other processes "
        "during the measurement.",
        "",
    ]
    if {r["method"] for r in report["results"]} & {"hf_slow", "mambakit_reference"}:
        lines += [
            "hf_slow and mambakit_reference run a Python loop over time under autograd and index a full-length "
            "tensor at every step; the backward of each such index writes a gradient the size of the whole "
            "tensor: O(L^2) memory traffic, which is why they take minutes at L = 1024 and time out at 8192.",
            "",
        ]
    lines += [
        "## Correctness at (batch, dim, N, L) = " + str(tuple(CHECK_SHAPE)) + ", fp32 vs float64 reference",
        "",
        "| method | out | worst gradient (which) |",
        "|---|---|---|",
    ]
    for name, errors in report["correctness"].items():
        grads = {k: v for k, v in errors.items() if k != "out"}
        worst = max(grads, key=grads.get)
        lines.append(f"| {name} | {errors['out']:.1e} | {grads[worst]:.1e} ({worst}) |")
    lines += [
        "",
        "## Results",
        "",
        "| shape (b, d, N, L) | method | forward (s) | forward+backward (s) | peak RSS delta (MB) | "
        "autograd saved (MB) | other load (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        fwd = (
            f"{r['forward_s']:.3f}"
            if r["status"] == "ok"
            else (f"{r['first_forward_s']:.2f}" if "first_forward_s" in r else "-")
        )
        peak = r.get("peak_rss_delta_mb")
        peak_text = "-" if peak is None else (f"{peak:.0f}" if r["status"] == "ok" else f">= {peak:.0f} at kill")
        saved = r.get("autograd_saved_mb")
        load = r.get("other_load")
        load_text = "-" if load is None else f"{load:.2f}" + (" (contended)" if load > CONTENDED else "")
        lines.append(
            f"| {tuple(r['shape'])} | {r['method']} | {fwd} | {fmt_s(r)} | {peak_text} | "
            f"{'-' if saved is None else f'{saved:.0f}'} | {load_text} |"
        )
    lines += [
        "",
        "## Goal: mambakit torch >= 2x faster than the faster of HF slow path and mambapy, peak memory <= mambapy's",
        "",
        "| shape | mambakit torch (s) | faster competitor (s) | speedup | peak MB torch / mambapy | met |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        lines.append(
            f"| {tuple(s['shape'])} | {s['torch_s']:.3f} | {s['competitor']} | {s['speedup']} | "
            f"{s['memory']} | {s['met']} |"
        )
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for shape in {tuple(r["shape"]): None for r in results}:
        by = {r["method"]: r for r in results if tuple(r["shape"]) == shape}
        ours = by.get("mambakit_torch")
        if not ours or ours["status"] != "ok":
            continue
        rivals = [by[m] for m in ("hf_slow", "mambapy") if m in by]
        finished = [r for r in rivals if r["status"] == "ok"]
        if finished:
            best = min(finished, key=lambda r: r["fwd_bwd_s"])
            competitor = f"{best['fwd_bwd_s']:.3f} ({best['method']})"
            speedup = best["fwd_bwd_s"] / ours["fwd_bwd_s"]
            speed_ok = speedup >= 2
            speed_text = f"{speedup:.1f}x"
        else:  # every competitor timed out: the speedup is at least limit / ours
            limit = min((r["limit_s"] for r in rivals), default=0)
            competitor, speed_ok = "all timed out", bool(rivals)
            speed_text = f"> {limit / ours['fwd_bwd_s']:.0f}x"
        mp = by.get("mambapy")
        mem_ok = (
            mp is not None
            and mp.get("peak_rss_delta_mb") is not None
            and ours["peak_rss_delta_mb"] <= mp["peak_rss_delta_mb"]
        )
        memory = f"{ours['peak_rss_delta_mb']:.0f} / " + (
            f"{mp['peak_rss_delta_mb']:.0f}" if mp and mp.get("peak_rss_delta_mb") is not None else "-"
        )
        rows.append(
            {
                "shape": list(shape),
                "torch_s": ours["fwd_bwd_s"],
                "competitor": competitor,
                "speedup": speed_text,
                "memory": memory,
                "met": "yes" if speed_ok and mem_ok else "no",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES), help="';'-separated batch,dim,N,L"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed runs after the warm-up, at most")
    parser.add_argument("--budget-s", type=float, default=30.0, help="seconds of timed runs per measurement")
    parser.add_argument("--slow-s", type=float, default=20.0, help="a first run longer than this is the result")
    parser.add_argument("--limit-s", type=float, default=120.0, help="time limit of mambakit_torch and mambapy")
    parser.add_argument("--slow-limit-s", type=float, default=240.0, help="time limit of reference and hf_slow")
    parser.add_argument("--retries", type=int, default=2, help="repeats of a measurement taken under load")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s]
    if args.child:
        child(args.child, shapes[0], args.reps, args.slow_s, args.budget_s)
        return

    start = time.time()
    machine = machine_info()  # now: the commit recorded is the one measured, even if HEAD moves during the run
    methods = [m for m in args.methods.split(",") if m]
    print("correctness vs float64 reference at", CHECK_SHAPE, flush=True)
    correctness = check_correctness()
    for name, errors in correctness.items():
        print(f"  {name:20s} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)
    results = []
    for shape in shapes:
        for method in methods:
            print(f"{method:20s} {shape} ...", end=" ", flush=True)
            wait_for_quiet(60)
            result = run_child(method, shape, args)
            # The machine may be shared: repeat a measurement taken under load (when it lasted at most 150 s),
            # keep the least loaded.
            for _ in range(args.retries):
                measured_s = result.get("fwd_bwd_s", 1e9) * result.get("reps", 1)
                if result.get("other_load", 0) <= CONTENDED or measured_s > 150:
                    break
                print(f"contended ({result['other_load']:.2f} cores), again ...", end=" ", flush=True)
                wait_for_quiet(180)
                result = min(result, run_child(method, shape, args), key=lambda r: r.get("other_load", 1e9))
            results.append(result)
            print(fmt_s(result), f"| peak +{result.get('peak_rss_delta_mb', '?')} MB", flush=True)
    notes = []
    for r in results:
        if r.get("other_load", 0) > CONTENDED:
            notes.append(
                f"{r['method']} at {tuple(r['shape'])} ran while other processes used "
                f"{r['other_load']:.2f} cores on average: its time is pessimistic."
            )
        if r["status"] == "error":
            notes.append(f"{r['method']} at {tuple(r['shape'])} failed: {r.get('stderr', '')[-300:]}")
    report = {
        "date": now(zone=True),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "total_minutes": (time.time() - start) / 60,
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "check_shape": list(CHECK_SHAPE),
        "correctness": correctness,
        "results": results,
        "summary": summarise(results),
        "notes": notes,
    }
    report["settings"]["shapes"] = [list(s) for s in shapes]
    text = markdown(report)
    write(args.out, "cpu_scan", report, text)
    print(text)


if __name__ == "__main__":
    main()
