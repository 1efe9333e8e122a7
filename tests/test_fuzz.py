"""Fuzzing (hypothesis) of what a user hands mambakit: config values from files, the --config file of a run, the
CLI's flags, and the ops' arguments. The property everywhere: the input is accepted, or refused with a ValueError
or TypeError (a `MambakitError` from the CLI, exit code 2); never another exception, never a traceback (#15)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambakit import ops
from mambakit.cli import main
from mambakit.cli_support import resolve_run_options
from mambakit.domains import RunOptions
from mambakit.errors import MambakitError
from mambakit.models.config import MambaConfig

# Values a JSON or YAML file can hold, the awkward ones weighted in: quoted numbers and booleans, huge and
# negative integers, non-finite floats, empty and nested containers.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 64, 10**9, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "false", "true", "1e-5", "16", "auto", "nan", "random", "tiny", "\x00", "é"]),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG_KEYS = [f.name for f in dataclasses.fields(MambaConfig)]


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=6))
def test_a_checkpoint_config_of_any_values_loads_or_is_refused_by_name(values):
    try:
        config = MambaConfig.from_dict(values)
    except ValueError as error:
        assert isinstance(error, MambakitError), f"{type(error).__name__}: {error}"
        assert "\n" not in str(error).strip()
        return
    # What was accepted is a config that saves and loads back as itself.
    assert MambaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


RUN_KEYS = [f.name for f in dataclasses.fields(RunOptions)]


@FUZZ
@given(st.dictionaries(st.sampled_from([*RUN_KEYS, "unknown_key"]), VALUES, max_size=5))
def test_a_run_config_file_of_any_values_is_read_or_refused_naming_the_file(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        run, _ = resolve_run_options(path, device="cpu")
    except MambakitError as error:
        assert "\n" not in str(error).strip()
        return
    assert isinstance(run, RunOptions)


# Flags of `train synthetic`, each with values a user could type: numbers out of range, words, empty strings.
# --max-steps and --epochs get no large valid values: a run asked for 10^20 steps rightly trains on.
AWKWARD = ["0", "-1", "1", "-0", "x", "", "1.5", "nan"]
NUMBERS = st.sampled_from([*AWKWARD, "2", "1e300", "inf", "99999999999999999999", "4194305"])
FLAGS = {
    "--max-steps": st.sampled_from(AWKWARD),
    "--epochs": st.sampled_from(AWKWARD),
    **dict.fromkeys(["--batch-size", "--lr", "--seed", "--length", "--vocab", "--count"], NUMBERS),
    "--device": st.sampled_from(["cpu", "cuda", "tpu", ""]),
    "--preset": st.sampled_from(["tiny", "huge", ""]),
    "--model": st.sampled_from(["mamba", "transformer", "hybrid", "x"]),
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=FLAGS).filter(bool))
def test_cli_flags_of_any_value_run_or_give_one_line(tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "synthetic", "--task", "induction-heads", "--out", str(out / "run"), "--device", "cpu"]
    argv += ["--max-steps", "1", "--batch-size", "2", "--length", "16"]  # defaults the drawn flags override
    for flag, value in flags.items():
        argv += [flag, value]
    with contextlib.redirect_stderr(io.StringIO()) as stderr, contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    err = stderr.getvalue()
    assert code in (0, 2), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
        assert "internal error" not in err and "Traceback" not in err
        assert lines, "a refusal says why"


def _tensor_or_junk(draw, shape, dtype):
    kind = draw(st.sampled_from(["tensor", "tensor", "tensor", "list", "int", "wrong-shape", "none"]))
    if kind == "list":
        return torch.randn(shape).tolist()
    if kind == "int":
        return torch.ones(shape, dtype=torch.int32)
    if kind == "wrong-shape":
        return torch.randn(*[max(0, s + draw(st.integers(-1, 1))) for s in shape], dtype=dtype)
    if kind == "none":
        return None
    return torch.randn(shape, dtype=dtype)


@st.composite
def scan_arguments(draw):
    batch, dim, states, length = (draw(st.integers(0, 3)) for _ in range(4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    layout = draw(st.sampled_from(["invariant", "varying", "grouped"]))
    bc_shape = {"invariant": (dim, states), "varying": (batch, states, length), "grouped": (batch, 1, states, length)}
    return {
        "u": _tensor_or_junk(draw, (batch, dim, length), dtype),
        "delta": _tensor_or_junk(draw, (batch, dim, length), dtype),
        "A": _tensor_or_junk(draw, (dim, states), torch.float32),
        "B": _tensor_or_junk(draw, bc_shape[layout], dtype),
        "C": _tensor_or_junk(draw, bc_shape[draw(st.sampled_from(list(bc_shape)))], dtype),
        "D": draw(st.sampled_from([None, torch.randn(dim), torch.randn(dim + 1)])),
        "delta_softplus": draw(st.booleans()),
    }


@FUZZ
@given(scan_arguments())
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_selective_scan_of_any_arguments_computes_or_names_the_argument(backend, arguments):
    try:
        out = ops.selective_scan(**arguments, backend=backend)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error).strip()
        return
    assert out.shape == arguments["u"].shape
    assert all(math.isfinite(v) for v in out.float().flatten().tolist()[:64])
