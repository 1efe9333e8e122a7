"""mamba-ssm's own op tests (tests/third_party/mamba_ssm_ops) on several backends, pass counts side by side.

Give it the JUnit XML files pytest wrote for each backend (`--junitxml`), named backend=path[,path...]; the first
is the baseline, usually `upstream` (mamba-ssm's own functions). A run finished in parts (`pytest @ids.txt` with the
node ids the first part's file lacks) is given as both files:

    MAMBAKIT_OPS_TEST_FULL_GRID=1 MAMBAKIT_OPS_TEST_BACKEND=upstream pytest -n 16 tests/third_party/mamba_ssm_ops \
        --junitxml upstream.xml
    (the same with MAMBAKIT_OPS_TEST_BACKEND=triton, triton.xml)
    python bench/op_tests.py upstream=upstream.xml triton=triton.xml --commit abc1234 --out bench/results

It prints, and writes to op_tests_<commit>.{md,json}, passed / failed / skipped per test, (B, C) layout and input
dtype, and whether each backend passes at least as often as the baseline on every row (the #15 must-show).
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RESULTS, git_commit, now, write

#: test_selective_scan's parameters in pytest's id order (the decorator nearest the function first).
SCAN_PARAMETERS = (
    "is_variable_B",
    "is_variable_C",
    "varBC_groups",
    "has_D",
    "has_z",
    "has_delta_bias",
    "delta_softplus",
    "return_last_state",
    "seqlen",
    "itype",
    "wtype",
)
ITYPES = {"itype0": "fp32", "itype1": "fp16", "itype2": "bf16"}
OUTCOMES = ("passed", "failed", "skipped")


def layout(variable: str, groups: str) -> str:
    """A B or C layout in words: time-invariant (dim, N), or per step with its group count."""
    if variable == "False":
        return "time-invariant"
    return "per step" if groups == "1" else f"per step, {groups} groups"


def row_of(name: str) -> tuple[str, str, str]:
    """(test, layout, dtype) that a test case counts under."""
    test, _, ids = name.partition("[")
    values = ids.rstrip("]").split("-")
    if test == "test_selective_scan":
        params = dict(zip(SCAN_PARAMETERS, values, strict=True))
        bc = f"B {layout(params['is_variable_B'], params['varBC_groups'])}; "
        bc += f"C {layout(params['is_variable_C'], params['varBC_groups'])}"
        return test, bc, ITYPES[params["itype"]]
    return test, "heads" if "heads" in test else "single head", ITYPES.get(values[-1], values[-1])


def outcome(case: ET.Element) -> str:
    """passed, failed (a failure or an error) or skipped."""
    if case.find("skipped") is not None:
        return "skipped"
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    return "passed"


def test_cases(paths: list[Path]) -> dict[str, ET.Element]:
    """The test cases of one backend's JUnit XML files (a run resumed in parts gives several) by name; a test in
    two files counts once, as its later outcome. xdist's entries for an interrupted worker have no name."""
    cases = {}
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            if case.get("name"):
                cases[case.get("name", "")] = case
    return cases


def count(cases: dict[str, ET.Element]) -> dict[tuple[str, str, str], Counter]:
    """Outcomes per row."""
    counts: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    for name, case in cases.items():
        counts[row_of(name)][outcome(case)] += 1
    return counts


def first_failures(cases: dict[str, ET.Element], limit: int = 5) -> list[str]:
    """The first few failure messages, one line each, to say what failed."""
    messages = []
    for case in cases.values():
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None and len(messages) < limit:
            message = re.sub(r"\s+", " ", failure.get("message", ""))[:200]
            messages.append(f"{case.get('name')}: {message}")
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="backend=junit.xml[,more.xml], the baseline first")
    parser.add_argument("--commit", default="", help="the commit tested (the GPU machine has no .git)")
    parser.add_argument("--device", default="", help="the machine the tests ran on, for the record")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = {}
    for spec in args.runs:
        backend, _, paths = spec.partition("=")
        cases[backend] = test_cases([Path(path) for path in paths.split(",")])
    runs = {backend: count(backend_cases) for backend, backend_cases in cases.items()}
    baseline, *others = runs
    rows = sorted(set().union(*runs.values()))
    header = "| test | layout | dtype | " + " | ".join(f"{b} pass/fail/skip" for b in runs) + " | "
    header += " | ".join(f"{b} ≥ {baseline}" for b in others) + " |"
    lines = [header, "|" + " --- |" * (3 + len(runs) + len(others))]
    verdict = {b: True for b in others}
    for row in rows:
        cells = ["/".join(str(runs[b][row][o]) for o in OUTCOMES) for b in runs]
        checks = []
        for b in others:
            at_least = runs[b][row]["passed"] >= runs[baseline][row]["passed"]
            verdict[b] &= at_least
            checks.append("yes" if at_least else "**no**")
        lines.append(f"| {' | '.join(row)} | {' | '.join(cells)} | {' | '.join(checks)} |")
    totals = {b: {o: sum(c[o] for c in runs[b].values()) for o in OUTCOMES} for b in runs}
    commit = git_commit(args.commit)
    device = args.device or "device not given"
    summary = [
        f"# mamba-ssm's op tests on mambakit's backends ({device}, commit {commit}, {now()})",
        "",
        "Totals: "
        + "; ".join(
            f"{b} {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped" for b, t in totals.items()
        ),
        "",
        *(
            f"- {b} passes at least as often as {baseline} on every row: {'yes' if ok else 'no'}"
            for b, ok in verdict.items()
        ),
        "",
        *lines,
    ]
    for backend, backend_cases in cases.items():
        failures = first_failures(backend_cases)
        if failures:
            summary += ["", f"First failures on {backend}:", *(f"- `{f}`" for f in failures)]
    markdown = "\n".join(summary)
    print(markdown)
    data = {
        "device": args.device,
        "commit": commit,
        "totals": totals,
        "at_least_baseline": verdict,
        "rows": {" | ".join(row): {b: dict(runs[b][row]) for b in runs} for row in rows},
    }
    write(args.out, f"op_tests_{commit}", data, markdown)


if __name__ == "__main__":
    main()
