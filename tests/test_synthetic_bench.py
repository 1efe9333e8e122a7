"""`mambakit bench capabilities`: a part of the CPU tier end to end (its records, report and check, deterministic
with the seed), and how the checks and the papers' numbers are read from records."""

from __future__ import annotations

import json

import pytest
from mambakit.apps.synthetic import bench

from mambakit.cli import main


def test_cpu_tier_induction_heads_shows_mamba_extrapolating_past_attention(tmp_path, capsys):
    out = tmp_path / "capabilities"
    other = {
        "task": "mqar",
        "model": "mamba",
        "length": 64,
        "metric": "accuracy",
        "value": 0.5,
        "steps": 1,
        "seconds": 1,
    }
    out.mkdir()
    (out / "capabilities.json").write_text(json.dumps([other]))
    arguments = [
        "bench",
        "capabilities",
        "--tier",
        "cpu",
        "--tasks",
        "induction-heads",
        "--out",
        str(out),
        "--jobs",
        "2",
    ]
    assert main([*arguments, "--device", "cpu"]) == 0
    records = json.loads((out / "capabilities.json").read_text())
    assert other in records  # records of tasks this call did not run are kept
    ours = {(r["model"], r["length"]): r for r in records if r["task"] == "induction-heads"}
    assert set(ours) == {(model, n) for model in ("mamba", "transformer-rope") for n in (64, 256, 1024)}
    for record in ours.values():
        assert set(record) == {"task", "model", "length", "metric", "value", "steps", "seconds"}
        assert record["metric"] == "accuracy" and 0 <= record["value"] <= 1 and record["steps"] == 500
    # Trained at 64 tokens; at 4x that, Mamba still finds the answer well above chance (1/14), attention does not
    # (the Mamba paper's Table 11, at toy size).
    assert ours[("mamba", 256)]["value"] > ours[("transformer-rope", 256)]["value"] + 0.1
    report = (out / "capabilities.md").read_text()
    assert "Mamba above attention (Mamba paper Table 11) | yes |" in report
    assert "100% at every length 2^6..2^20 (Table 11)" in report  # the paper's number beside ours
    capsys.readouterr()
    assert main(["bench", "capabilities", "--tier", "tpu"]) == 2
    assert "choose cpu or gpu" in capsys.readouterr().err


def test_checks_and_paper_numbers_read_the_records():
    values = {
        ("induction-heads", "mamba", 256): 1.0,
        ("induction-heads", "mamba", 1048576): 0.98,
        ("induction-heads", "attention-rope", 1024): 0.3,
        ("icl-linear-regression", "mamba", 41): 0.4,
        ("icl-linear-regression", "least-squares", 41): 0.25,
    }
    checks = {check.claim: check.holds(values) for check in bench.GPU_CHECKS}
    assert checks["induction heads: Mamba >= 0.99 at every length 2^6..2^20"] is False
    assert checks["induction heads: attention (RoPE) below 0.5 at 2^10"] is True
    assert checks["linear regression: mamba within 2x of least squares (error averaged over the 41 points)"] is True
    assert checks["MQAR: attention >= 0.99 at d 64"] is None  # not run
    assert bench.paper_value("induction-heads", "attention-rope", 1024) == "31.3%"
    assert bench.paper_value("mqar", "attention-d64", 256).startswith("~1.0")
    assert bench.paper_value("copying", "mamba", 200).startswith("drops")
    assert bench.paper_value("selective-copying", "transformer", 4096) == ""


@pytest.mark.parametrize("tier", sorted(bench.TIERS))
def test_every_tier_run_is_a_valid_synthetic_run(tier):
    from mambakit.apps.synthetic.cli import DOMAIN, SyntheticOptions

    names = [run.name for run in bench.TIERS[tier][0]]
    assert len(set(names)) == len(names)
    for run in bench.TIERS[tier][0]:
        DOMAIN.task(run.task)
        SyntheticOptions(family=run.family, positions=run.positions, **run.task_sizes, **run.options)


def tiny_induction_runs() -> tuple:
    tiny = {"d_model": 16, "n_layer": 1, "d_state": 4, "attn_num_heads": 2}
    return tuple(
        bench.CapabilityRun(
            "induction-heads",
            model,
            family,
            steps=40,
            batch_size=8,
            lr=3e-3,
            sizes=tiny,
            task_sizes={"length": 32, "vocab": 8},
            eval_lengths=(32, 64),
            train={"num_workers": 2},
        )
        for model, family in (("mamba", "mamba"), ("transformer", "transformer"))
    )


def test_runs_in_parallel_processes_give_the_records_of_one_at_a_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.TIERS, "cpu", (tiny_induction_runs(), ()))

    def values(jobs: int) -> dict[tuple[str, int], float]:
        out = tmp_path / f"jobs{jobs}"
        bench.capabilities(tier="cpu", tasks=None, out=out, device="cpu", seed=3, steps_factor=0.5, jobs=jobs)
        records = json.loads((out / "capabilities.json").read_text())
        assert [r["model"] for r in records] == ["mamba", "mamba", "transformer", "transformer"]  # the tier's order
        assert {r["steps"] for r in records} == {20}
        return {(r["model"], r["length"]): r["value"] for r in records}

    assert values(2) == pytest.approx(values(1), abs=1e-6)
    assert "jobs 2 (runs at a time" in (tmp_path / "jobs2" / "capabilities.md").read_text()


def test_models_runs_only_those_and_keeps_the_other_records(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.TIERS, "cpu", (tiny_induction_runs(), ()))
    out = tmp_path / "capabilities"
    arguments = [
        "bench",
        "capabilities",
        "--tier",
        "cpu",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--steps-factor",
        "0.25",
    ]
    assert main(arguments) == 0
    first = json.loads((out / "capabilities.json").read_text())
    mamba_before = [r for r in first if r["model"] == "mamba"]
    for record in first:
        record["seconds"] = -1  # a marker: records this call does not rerun come back untouched
    (out / "capabilities.json").write_text(json.dumps(first))
    assert main([*arguments, "--models", "transformer", "--steps-factor", "0.5"]) == 0
    records = json.loads((out / "capabilities.json").read_text())
    assert [r["model"] for r in records] == ["mamba", "mamba", "transformer", "transformer"]
    assert [r["value"] for r in records if r["model"] == "mamba"] == [r["value"] for r in mamba_before]
    assert {(r["model"], r["steps"], r["seconds"] == -1) for r in records} == {
        ("mamba", 10, True),
        ("transformer", 20, False),
    }
    capsys.readouterr()
    assert main([*arguments, "--models", "mamba,rwkv"]) == 2
    assert "--models 'mamba,rwkv': the runs of induction-heads are mamba, transformer" in capsys.readouterr().err
    assert main([*arguments, "--models", "induction-heads--mamba"]) == 0  # one task's run by its name
    records = json.loads((out / "capabilities.json").read_text())
    assert {(r["model"], r["steps"]) for r in records} == {("mamba", 10), ("transformer", 20)}
