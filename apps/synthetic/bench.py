"""`mambakit bench capabilities`: train and evaluate every (task, model) pair of a tier of the capability suite,
and write DIR/capabilities.json (records {"task", "model", "length", "metric", "value", "steps", "seconds"}) and
DIR/capabilities.md (our numbers beside the papers', and the tier's checks).

Two tiers: `cpu`, the qualitative effects that show at toy size on 2 cores in a few minutes (deterministic with
its seed); `gpu`, the papers' settings at a budget of about 10 minutes per task on one H100/H200. Every budget
and every departure from a paper's setting is written at the run; ../shared/notes/capabilities.md has the
sources. Runs of a call replace the records of the same (task, model) in DIR/capabilities.json and keep the
others, so a tier can be run a few tasks at a time."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import DeviceOption, resolve_device
from mambakit.errors import UserError

#: Attention is evaluated up to this length, as in the Mamba paper (out of memory beyond 2^14 there).
ATTENTION_MAX_LENGTH = 1 << 14


@dataclass(frozen=True)
class CapabilityRun:
    """One (task, model) pair of a tier: the model family and sizes, the task's sizes, the training budget and
    the lengths it is evaluated at (none: its training length)."""

    task: str
    model: str
    """The label in the records (e.g. "transformer-rope")."""
    family: str
    steps: int
    batch_size: int
    lr: float
    sizes: Mapping[str, Any]
    """Model config fields: d_model, n_layer, d_state, attn_num_heads, and any other."""
    task_sizes: Mapping[str, int] = field(default_factory=dict)
    """The synthetic options length, vocab and count (their meaning per task: `mambakit train synthetic --help`)."""
    positions: str = "rope"
    eval_lengths: tuple[int, ...] = ()
    train: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig settings beyond the defaults below (weight decay, warm-up, ...)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Further synthetic options (e.g. the ICL curriculum interval)."""

    @property
    def name(self) -> str:
        return f"{self.task}--{self.model}"


@dataclass(frozen=True)
class Check:
    """One qualitative claim of a tier, decided from the records: `holds(values)` with values[(task, model,
    length)] = value."""

    claim: str
    holds: Callable[[Mapping[tuple[str, str, int], float]], bool | None]


def _value(values: Mapping[tuple[str, str, int], float], task: str, model: str, length: int | None = None) -> float:
    """The record of (task, model) at `length` (None: its only or training length); NaN when missing."""
    found = [value for (t, m, n), value in values.items() if t == task and m == model and length in (None, n)]
    return found[0] if len(found) == 1 else float("nan")


def _compare(
    task: str, better: str, worse: str, length: int | None = None, margin: float = 0.0
) -> Callable[..., bool | None]:
    """`better` scores above `worse` (by at least `margin` when one is given)."""

    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        high, low = _value(values, task, better, length), _value(values, task, worse, length)
        if high != high or low != low:
            return None
        return high >= low + margin if margin else high > low

    return holds


def _not(claim: Callable[..., bool | None]) -> Callable[..., bool | None]:
    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        outcome = claim(values)
        return None if outcome is None else not outcome

    return holds


def _at_least(task: str, model: str, bar: float, lengths: Sequence[int] | None = None) -> Callable[..., bool | None]:
    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        found = [
            value
            for (t, m, n), value in values.items()
            if t == task and m == model and (lengths is None or n in lengths)
        ]
        return None if not found else min(found) >= bar

    return holds


def _at_most(task: str, model: str, bar: float, length: int | None = None) -> Callable[..., bool | None]:
    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        value = _value(values, task, model, length)
        return None if value != value else value <= bar

    return holds


def _at_most_all(task: str, models: Sequence[str], bar: float) -> Callable[..., bool | None]:
    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        outcomes = [_at_most(task, model, bar)(values) for model in models]
        return None if None in outcomes else all(outcomes)

    return holds


def _within(model: str, factor: float) -> Callable[..., bool | None]:
    """ICL linear regression: `model`'s error at most `factor` times the least-squares baseline's."""

    def holds(values: Mapping[tuple[str, str, int], float]) -> bool | None:
        ours = _value(values, "icl-linear-regression", model)
        baseline = _value(values, "icl-linear-regression", "least-squares")
        return None if ours != ours or baseline != baseline else ours <= factor * baseline

    return holds


# The CPU tier: the toy sizes of ../shared/notes/capabilities.md ("CPU smoke"), 2 layers, batch 32.
_CPU_SMALL = {"d_model": 32, "n_layer": 2, "d_state": 8, "attn_num_heads": 4}
_CPU_MQAR = {"d_model": 64, "n_layer": 2, "d_state": 8, "attn_num_heads": 4}
CPU_TIER: tuple[CapabilityRun, ...] = (
    *(
        # 1,500 steps: at 600 neither model had left chance for some seeds (S6 learns from about step 900).
        CapabilityRun(
            "selective-copying",
            model,
            model,
            steps=1500,
            batch_size=32,
            lr=3e-3,
            sizes=_CPU_SMALL,
            task_sizes={"length": 64, "vocab": 8, "count": 4},
        )
        for model in ("mamba", "mamba-lti")
    ),
    *(
        CapabilityRun(
            "induction-heads",
            model,
            family,
            steps=500,
            batch_size=32,
            lr=lr,
            sizes=_CPU_SMALL,
            task_sizes={"length": 64, "vocab": 16},
            eval_lengths=(64, 256, 1024),
        )
        for model, family, lr in (("mamba", "mamba", 3e-3), ("transformer-rope", "transformer", 1e-3))
    ),
    *(
        CapabilityRun(
            "mqar",
            model,
            family,
            steps=600,
            batch_size=32,
            lr=3e-3,
            sizes={**_CPU_MQAR, **extra},
            task_sizes={"length": 64, "vocab": 256, "count": 8},
        )
        # Zoology's attention baseline: attention layers without an MLP.
        for model, family, extra in (("mamba", "mamba", {}), ("attention", "transformer", {"d_intermediate": 0}))
    ),
)
CPU_TIER += (
    # Park et al.'s vector-valued MQAR at toy size (d 8, 8 pairs): GPT-2-style attention (learned positions, MLP)
    # against Mamba, 2 layers of 32.
    *(
        CapabilityRun(
            "icl-vector-mqar",
            model,
            family,
            steps=3000,
            batch_size=32,
            lr=3e-3,
            sizes=_CPU_SMALL,
            positions="learned",
            task_sizes={"vocab": 8, "count": 8},
        )
        for model, family in (("transformer", "transformer"), ("mamba", "mamba"))
    ),
    # In-context linear regression at toy size (d 5, 11 points): only "Mamba learns in context" is plausible here.
    CapabilityRun(
        "icl-linear-regression",
        "mamba",
        "mamba",
        steps=600,
        batch_size=32,
        lr=3e-3,
        sizes=_CPU_SMALL,
        task_sizes={"vocab": 5, "count": 11},
    ),
)
CPU_CHECKS = (
    Check("selective copying: S6 above LTI (Mamba paper Table 1)", _compare("selective-copying", "mamba", "mamba-lti")),
    Check(
        "induction heads at 4x the training length (256): Mamba above attention (Mamba paper Table 11)",
        _compare("induction-heads", "mamba", "transformer-rope", 256),
    ),
    Check("MQAR: attention above Mamba (Zoology)", _compare("mqar", "attention", "mamba")),
    Check(
        "vector-valued MQAR: attention above Mamba (Park et al.)", _compare("icl-vector-mqar", "transformer", "mamba")
    ),
    Check(
        "in-context linear regression: Mamba below the zero predictor (error < 1)",
        _at_most("icl-linear-regression", "mamba", 1.0),
    ),
)


def _recall_runs(task: str, pairs: int, batch_size: int, lr: float) -> tuple[CapabilityRun, ...]:
    """MQAR at T 256, vocab 8,192: attention (learned positions, no MLP), Mamba and MambaFormer, 2 layers of width
    64 and 128, 3,000 steps, AdamW with weight decay 0.1. MambaFormer's attention layers are the attention
    baseline's (one head, Zoology's), so the comparison measures what its Mamba layers add; with Park's 8 heads its
    heads are 8 wide at d 64 (92.3% there against 100% at d 128, on the GPU; at the CPU tier's MQAR size one head
    brought the training loss to 0.14 by step 180 where 8 heads were at 1.55)."""
    return tuple(
        CapabilityRun(
            task,
            f"{model}-d{width}",
            family,
            steps=3000,
            batch_size=batch_size,
            lr=lr,
            sizes={"d_model": width, "n_layer": 2, "d_state": 16, "attn_num_heads": 1, **extra},
            positions="learned",
            task_sizes={"length": 256, "vocab": 8192, "count": pairs},
            train={"weight_decay": 0.1, **_GPU_LOADER},
        )
        for width in (64, 128)
        for model, family, extra in (
            ("attention", "transformer", {"d_intermediate": 0}),
            ("mamba", "mamba", {}),
            ("mambaformer", "mambaformer", {}),
        )
    )


# The GPU tier: the papers' settings at about 10 minutes per task on one H100/H200; data is generated on the CPU
# by 8 loader processes.
_GPU_LOADER = {"num_workers": 8}
_INDUCTION_LENGTHS = tuple(1 << n for n in range(6, 21))
GPU_TIER: tuple[CapabilityRun, ...] = (
    # Mamba paper 4.1.1 / App. E.1: L 4096, 16 data tokens, vocab 16, 2 layers, D 64; 400K steps at lr 1e-4 there,
    # here 20,000 steps at 1e-3 (the notes' budget: 10.5 / 6.9 ms a graphed step on an H100, about 6 minutes for
    # both; at 4,000 steps S6 was at 21%, LTI at 7%).
    *(
        CapabilityRun(
            "selective-copying",
            model,
            model,
            steps=20000,
            batch_size=64,
            lr=1e-3,
            sizes={"d_model": 64, "n_layer": 2, "d_state": 16},
            task_sizes={"length": 4096, "vocab": 16, "count": 16},
            train=_GPU_LOADER,
        )
        for model in ("mamba", "mamba-lti")
    ),
    # Mamba paper 4.1.2: train at 256, vocab 16, 2 layers; Mamba D 64 at lr 1e-3, attention D 128 (8 heads) at
    # 2e-4; Adam without weight decay at a constant lr. Batch 64 instead of 8, and the paper's sequences: Mamba and
    # MHA-Abs 25 epochs of 8,192 steps of 8 (1.6M: 25,600 steps here), MHA-RoPE 50 epochs (3.3M: 51,200 steps). At
    # 4,000 steps with a cosine decay Mamba held 100% only to 2^11 and MHA-RoPE did not learn (10% at 256).
    CapabilityRun(
        "induction-heads",
        "mamba",
        "mamba",
        steps=25600,
        batch_size=64,
        lr=1e-3,
        sizes={"d_model": 64, "n_layer": 2, "d_state": 16},
        task_sizes={"length": 256, "vocab": 16},
        eval_lengths=_INDUCTION_LENGTHS,
        train={"min_lr_ratio": 1.0, **_GPU_LOADER},
    ),
    *(
        CapabilityRun(
            "induction-heads",
            f"attention-{positions}",
            "transformer",
            steps=steps,
            batch_size=64,
            lr=2e-4,
            sizes={"d_model": 128, "n_layer": 2, "attn_num_heads": 8, "d_intermediate": 0},
            positions=positions,
            task_sizes={"length": 256, "vocab": 16},
            eval_lengths=tuple(n for n in _INDUCTION_LENGTHS if n <= ATTENTION_MAX_LENGTH),
            train={"min_lr_ratio": 1.0, **_GPU_LOADER},
        )
        for positions, steps in (("rope", 51200), ("learned", 25600))
    ),
    # Zoology Fig. 2: T 256, 16 pairs, vocab 8,192, 2 layers without MLP, d 64 and 128; AdamW wd 0.1. Here one lr
    # (2.2e-3, from its sweep) and 3,000 steps of 128 (384K examples; Zoology: 64 epochs of 100K).
    *_recall_runs("mqar", pairs=16, batch_size=128, lr=2.2e-3),
    # Mamba-2 paper 9.1 / App. D.1: random tokens between the queries, T 256, K = T/4 = 64, vocab 8,192, 2 layers,
    # D 64 and 128, lr 10^-2.5. Without its curriculum over K (T/32 .. T/4): the full task from the first step.
    *_recall_runs("mqar-hard", pairs=64, batch_size=256, lr=3.2e-3),
    # Park et al.: GPT-2 (learned positions, attention + MLP) 128x2, Mamba 128x4, MambaFormer 128x4 (+ its first
    # Mamba block); Adam without weight decay, batch 64. 24,000 steps where they trained 500K (the budget: 7.4 ms a
    # graphed step of the Mamba on an H100, about 3 minutes a run; at 8,000 no model learned any of the three).
    *(
        CapabilityRun(
            task,
            model,
            family,
            steps=steps,
            batch_size=64,
            lr=lr,
            sizes={"d_model": 128, "n_layer": layers, "d_state": 16, "attn_num_heads": 8},
            positions="learned",
            task_sizes=task_sizes,
            train={"max_grad_norm": clip, **_GPU_LOADER},
            options=options,
        )
        for task, steps, lr, clip, task_sizes, options in (
            ("icl-vector-mqar", 24000, 2e-4, 100.0, {"vocab": 20, "count": 32}, {}),
            ("icl-sparse-parity", 24000, 4e-4, 10.0, {"vocab": 10, "count": 140}, {}),
            # The curriculum at half Park's pace, so it reaches the full task (20 dims, 41 points) by step 15,000.
            ("icl-linear-regression", 24000, 1e-4, 10.0, {"vocab": 20, "count": 41}, {"curriculum_every": 1000}),
        )
        for model, family, layers in (
            ("transformer", "transformer", 2),
            ("mamba", "mamba", 4),
            ("mambaformer", "mambaformer", 4),
        )
    ),
    # Jelassi et al.: copy strings of 5-50 letters (26), 4 layers of D 256, batch 64, lr 5e-4; string accuracy at
    # 50, 100, 200 and 400 letters.
    *(
        CapabilityRun(
            "copying",
            model,
            family,
            steps=3000,
            batch_size=64,
            lr=5e-4,
            sizes={"d_model": 256, "n_layer": 4, "d_state": 16, "attn_num_heads": 8},
            positions=positions,
            task_sizes={"length": 50, "vocab": 30, "count": 5},
            eval_lengths=(50, 100, 200, 400),
            train={"weight_decay": 0.1, **_GPU_LOADER},
        )
        for model, family, positions in (
            ("transformer-rope", "transformer", "rope"),
            ("transformer-nope", "transformer", "none"),
            ("mamba", "mamba", "rope"),
            ("mambaformer", "mambaformer", "none"),
        )
    ),
)
GPU_CHECKS = (
    Check("selective copying: Mamba (S6) >= 0.99", _at_least("selective-copying", "mamba", 0.99)),
    Check("selective copying: Mamba-LTI <= 0.60", _at_most("selective-copying", "mamba-lti", 0.60)),
    Check("induction heads: Mamba >= 0.99 at every length 2^6..2^20", _at_least("induction-heads", "mamba", 0.99)),
    Check(
        "induction heads: attention (RoPE) below 0.5 at 2^10",
        _at_most("induction-heads", "attention-rope", 0.5, 1024),
    ),
    Check("MQAR: attention >= 0.99 at d 64", _at_least("mqar", "attention-d64", 0.99)),
    Check("MQAR: Mamba below attention at d 64", _compare("mqar", "attention-d64", "mamba-d64")),
    Check(
        "MQAR: MambaFormer at least as good as attention (d 64)",
        _not(_compare("mqar", "attention-d64", "mambaformer-d64")),
    ),
    Check("MQAR (hard): attention >= 0.75 at D 64", _at_least("mqar-hard", "attention-d64", 0.75)),
    Check("MQAR (hard): Mamba-1 <= 0.05 at D 64 and 128", _at_most_all("mqar-hard", ("mamba-d64", "mamba-d128"), 0.05)),
    Check("sparse parity: Mamba > 0.9", _at_least("icl-sparse-parity", "mamba", 0.9)),
    Check("sparse parity: MambaFormer > 0.9", _at_least("icl-sparse-parity", "mambaformer", 0.9)),
    Check("sparse parity: Transformer near chance (<= 0.6)", _at_most("icl-sparse-parity", "transformer", 0.6)),
    # Park et al. Table 1: the Transformer and MambaFormer solve it, Mamba does not; "well ahead" is 10 points, so
    # that models all at chance do not pass by a rounding.
    Check(
        "vector MQAR: Transformer well ahead of Mamba (>= 10 points)",
        _compare("icl-vector-mqar", "transformer", "mamba", margin=0.1),
    ),
    Check(
        "vector MQAR: MambaFormer well ahead of Mamba (>= 10 points)",
        _compare("icl-vector-mqar", "mambaformer", "mamba", margin=0.1),
    ),
    *(
        Check(
            f"linear regression: {model} within 2x of least squares (error averaged over the 41 points)",
            _within(model, 2.0),
        )
        for model in ("transformer", "mamba", "mambaformer")
    ),
    Check("copying: Transformer (RoPE) >= 0.95 at 50 letters", _at_least("copying", "transformer-rope", 0.95, (50,))),
    Check("copying: Mamba <= 0.1 at 200 letters", _at_most("copying", "mamba", 0.1, 200)),
)
TIERS = {"cpu": (CPU_TIER, CPU_CHECKS), "gpu": (GPU_TIER, GPU_CHECKS)}

#: The papers' numbers beside ours: (task, model label prefix) -> {length or 0 for any: text}.
PAPER: dict[tuple[str, str], dict[int, str]] = {
    ("selective-copying", "mamba"): {0: "99.8% (Mamba paper Table 1, L 4096)"},
    ("selective-copying", "mamba-lti"): {0: "56.4% (Table 1, Mamba block with S4)"},
    ("induction-heads", "mamba"): {0: "100% at every length 2^6..2^20 (Table 11)"},
    ("induction-heads", "attention-rope"): {
        64: "100%",
        128: "100%",
        256: "100% (train)",
        512: "83.6%",
        1024: "31.3%",
        2048: "18.4%",
        4096: "8.6%",
        8192: "9.0%",
        16384: "5.5%",
    },
    ("induction-heads", "attention-learned"): {
        64: "100%",
        128: "99.6%",
        256: "100% (train)",
        512: "58.6%",
        1024: "26.6%",
        2048: "18.8%",
        4096: "9.8%",
        8192: "10.9%",
        16384: "7.8%",
    },
    ("mqar", "attention"): {0: "~1.0 (Zoology Fig. 2, T 256)"},
    ("mqar-hard", "attention-d64"): {0: "0.80 (Mamba-2 paper Fig. 8)"},
    ("mqar-hard", "attention-d128"): {0: "1.0 (Fig. 8)"},
    ("mqar-hard", "mamba-d64"): {0: "0.00 (Fig. 8)"},
    ("mqar-hard", "mamba-d128"): {0: "0.01 (Fig. 8)"},
    ("icl-sparse-parity", "transformer"): {0: "fails to learn (Park et al. Table 1)"},
    ("icl-sparse-parity", "mamba"): {0: "solves it (Table 1)"},
    ("icl-sparse-parity", "mambaformer"): {0: "solves it (Table 1)"},
    ("icl-vector-mqar", "transformer"): {0: "solves it (Table 1)"},
    ("icl-vector-mqar", "mamba"): {0: "fails to learn (Table 1)"},
    ("icl-vector-mqar", "mambaformer"): {0: "solves it (Table 1)"},
    ("icl-linear-regression", "transformer"): {0: "on par (Table 1)"},
    ("icl-linear-regression", "mamba"): {0: "on par (Table 1)"},
    ("icl-linear-regression", "mambaformer"): {0: "on par (Table 1)"},
    ("copying", "transformer"): {50: "solved in distribution (Jelassi et al.)"},
    ("copying", "mamba"): {
        50: "solved in distribution",
        **{n: "drops to ~0 past the training length (Jelassi et al.)" for n in (100, 200, 400)},
    },
    ("mqar", "mamba"): {0: "no Fig. 2 value; 0.57-0.91 by state size (Based Fig. 2)"},
    ("mqar", "mambaformer"): {0: "no paper value"},
}


def paper_value(task: str, model: str, length: int) -> str:
    """The paper's number for (task, model) at `length`, or "" when it has none: the entry of the model's label or,
    failing that, of its longest prefix (e.g. "mqar", "attention" for "attention-d64")."""
    matches = [
        (len(prefix), by_length)
        for (paper_task, prefix), by_length in PAPER.items()
        if paper_task == task and (model == prefix or model.startswith(prefix + "-"))
    ]
    if not matches:
        return ""
    by_length = max(matches, key=lambda match: match[0])[1]
    return by_length.get(length, by_length.get(0, ""))


def _primary(task: str) -> tuple[str, str]:
    """(the evaluation metric a task's records take, their metric name)."""
    if task == "copying":
        return "sequence_accuracy", "accuracy"  # Jelassi et al.'s string accuracy
    if task == "icl-linear-regression":
        return "error", "error"
    return "accuracy", "accuracy"


def _train_and_evaluate(run: CapabilityRun, out: Path, device: str, seed: int) -> list[dict[str, Any]]:
    from mambakit.cli_support import evaluate_domain, train_domain
    from mambakit.domains import RunOptions

    from .cli import DOMAIN, SyntheticOptions

    run_dir = out / "runs" / run.name
    shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own scratch: a rerun starts afresh
    train = {
        "eval_every": run.steps,
        "save_every": run.steps,
        "log_every": max(run.steps // 10, 1),
        "weight_decay": 0.0,
        **run.train,
    }
    options = SyntheticOptions(family=run.family, positions=run.positions, **run.task_sizes, **run.options)
    run_options = RunOptions(
        task=run.task,
        out=run_dir,
        max_steps=run.steps,
        batch_size=run.batch_size,
        lr=run.lr,
        device=device,
        seed=seed,
        model=dict(run.sizes),
        train=train,
    )
    started = time.perf_counter()
    train_domain(DOMAIN, run_options, options)
    seconds = round(time.perf_counter() - started, 1)
    checkpoint = run_dir / "best" if (run_dir / "best").exists() else run_dir / "last"
    evaluated, metric = _primary(run.task)
    # ICL prompts are measured in points (key/value pairs): "linear regression at 41 points".
    length = run.task_sizes.get("length", run.task_sizes.get("count", 0))
    record = {"task": run.task, "model": run.model, "steps": run.steps, "seconds": seconds, "metric": metric}
    if not run.eval_lengths:
        metrics = evaluate_domain(DOMAIN, checkpoint, [], {}, device=device)
        records = [{**record, "length": length, "value": metrics[evaluated]}]
        if "least_squares_error" in metrics:
            baseline = {**record, "model": "least-squares", "steps": 0, "seconds": 0.0}
            records.append({**baseline, "length": length, "value": metrics["least_squares_error"]})
        return records
    # Long sequences are evaluated a few at a time (Mamba reads them in chunks, its state carried); the checkpoint
    # is loaded once per batch size.
    by_batch: dict[int, list[int]] = {}
    for eval_length in run.eval_lengths:
        by_batch.setdefault(max(1, min(64, (1 << 22) // eval_length)), []).append(eval_length)
    metrics: dict[str, float] = {}
    for batch, lengths in by_batch.items():
        lengths_option = {"lengths": ",".join(map(str, lengths))}
        metrics.update(evaluate_domain(DOMAIN, checkpoint, [], lengths_option, batch, device))
    return [{**record, "length": n, "value": metrics[f"length {n}/{evaluated}"]} for n in run.eval_lengths]


def _train_and_evaluate_in_worker(
    run: CapabilityRun, out: Path, device: str, seed: int, threads: int
) -> list[dict[str, Any]]:
    """`_train_and_evaluate` in a process of its own that shares the machine with `jobs - 1` others: its share of
    the CPU threads."""
    import torch

    torch.set_num_threads(threads)
    return _train_and_evaluate(run, out, device, seed)


def _run_all(
    runs: Sequence[CapabilityRun], out: Path, device: str, seed: int, jobs: int
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(index in `runs`, records) of every run as it finishes; with jobs > 1 that many runs at a time, each in a
    process of its own on the same device (the tiers' models are too small to keep a GPU busy alone), with its
    share of the CPU cores for its threads and data-loader workers. Data does not depend on the number of
    loader workers, so results do not depend on `jobs`; the seconds do."""
    if jobs == 1:
        for index, run in enumerate(runs):
            yield index, _train_and_evaluate(run, out, device, seed)
        return
    share = max(1, (os.cpu_count() or 1) // jobs)
    # spawn: a forked child must not inherit a CUDA context.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict[Future[list[dict[str, Any]]], int] = {}
        for index, run in enumerate(runs):
            workers = min(int(run.train.get("num_workers", 0)), share)
            shared = replace(run, train={**run.train, "num_workers": workers})
            pending[pool.submit(_train_and_evaluate_in_worker, shared, out, device, seed, share)] = index
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    yield index, future.result()
                except BaseException:
                    for queued in pending:
                        queued.cancel()
                    raise


def _environment(device: str, jobs: int) -> dict[str, str]:
    import torch

    described = device
    if device.startswith("cuda"):
        described = torch.cuda.get_device_name(torch.device(device))
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "device": described,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "threads": str(torch.get_num_threads()),
        "jobs": f"{jobs} (runs at a time on the device: seconds are wall time shared with the others)"
        if jobs > 1
        else "1",
    }


def write_report(
    out: Path, records: list[dict[str, Any]], checks: Sequence[Check], environment: Mapping[str, str]
) -> str:
    """DIR/capabilities.md: the records beside the papers' numbers, then each check and whether it held."""
    values = {(r["task"], r["model"], r["length"]): r["value"] for r in records}
    lines = [
        "# Capability suite",
        "",
        ", ".join(f"{key} {value}" for key, value in environment.items()),
        "",
        "| task | model | length | metric | ours | paper | steps | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        shown = f"{r['value']:.3f}" if r["metric"] == "error" else f"{100 * r['value']:.1f}%"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['length']} | {r['metric']} | {shown} | "
            f"{paper_value(r['task'], r['model'], r['length'])} | {r['steps']} | {r['seconds']} |"
        )
    lines += ["", "| check | holds |", "|---|---|"]
    for check in checks:
        outcome = check.holds(values)
        lines.append(f"| {check.claim} | {'not run' if outcome is None else 'yes' if outcome else 'NO'} |")
    text = "\n".join(lines) + "\n"
    (out / "capabilities.md").write_text(text)
    return text


def capabilities(
    tier: Annotated[
        str, typer.Option("--tier", help="cpu (a few minutes on 2 cores) or gpu (about 10 min a task).")
    ] = "cpu",
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated tasks of the tier (default: all).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for capabilities.json, capabilities.md and the runs.")
    ] = Path("runs/capabilities"),
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of every run (data and initialisation).")] = 0,
    steps_factor: Annotated[
        float,
        typer.Option(
            "--steps-factor",
            min=0.01,
            help="Multiply every run's training steps (e.g. 4 for a longer budget than the tier's); recorded.",
        ),
    ] = 1.0,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=1,
            help="Runs at a time, each in its own process on the same device (small models leave a GPU idle); "
            "results do not change, seconds do.",
        ),
    ] = 1,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="Train every run with its steps replayed as CUDA graphs (train --cuda-graphs); recorded. Default: "
            "on for the gpu tier on a GPU (its budgets assume it), else off.",
            show_default=False,
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated model labels of those tasks' runs, or TASK--MODEL for one task's (default: "
            "all), e.g. to finish only the runs an earlier call did not; the other runs' records stay.",
        ),
    ] = None,
) -> None:
    """Train and evaluate every (task, model) pair of a tier of the capability suite; write DIR/capabilities.json
    and DIR/capabilities.md (ours beside the papers' numbers, and whether the tier's claims hold)."""
    if tier not in TIERS:
        raise UserError(f"--tier {tier!r}: choose cpu or gpu")
    runs, checks = TIERS[tier]
    known = list(dict.fromkeys(run.task for run in runs))
    chosen = known if tasks is None else [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise UserError(f"--tasks {tasks!r}: the {tier} tier has {', '.join(known)}")
    candidates = [run for run in runs if run.task in chosen]
    labels = list(dict.fromkeys(run.model for run in candidates))
    wanted = labels if models is None else [name.strip() for name in models.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in labels and name not in {run.name for run in candidates}]
    if unknown or not wanted:
        raise UserError(
            f"--models {models!r}: the runs of {', '.join(chosen)} are {', '.join(labels)} "
            "(or TASK--MODEL for one task's run)"
        )
    resolved = resolve_device(device)
    if cuda_graphs is None:
        cuda_graphs = tier == "gpu" and resolved == "cuda"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "capabilities.json"
    selected = [
        replace(
            run,
            steps=max(1, round(run.steps * steps_factor)),
            train={**run.train, "cuda_graphs": True} if cuda_graphs else run.train,
        )
        for run in candidates
        if run.model in wanted or run.name in wanted
    ]
    # This call's runs are run afresh (with their tasks' least-squares baselines); every other record stays.
    rerun = {(run.task, run.model) for run in selected} | {(run.task, "least-squares") for run in selected}
    kept = [r for r in json.loads(path.read_text()) if (r["task"], r["model"]) not in rerun] if path.exists() else []
    finished: dict[int, list[dict[str, Any]]] = {}
    records = kept
    for index, run_records in _run_all(selected, out, resolved, seed, jobs):
        finished[index] = run_records
        records = kept + [r for done in sorted(finished) for r in finished[done]]
        # In the tier's order whatever order runs finish in; written after every run, so an interrupted tier
        # keeps what it finished.
        records.sort(key=lambda r: known.index(r["task"]) if r["task"] in known else len(known))
        path.write_text(json.dumps(records, indent=1) + "\n")
    environment = {**_environment(resolved, jobs), "cuda graphs": "on" if cuda_graphs else "off"}
    print(write_report(out, records, checks, environment))
