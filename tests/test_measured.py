"""`auto`'s measured choice among GPU scan backends (mambakit.ops.measured), exercised on the CPU with two stand-in
backends: one that waits before scanning, one that scans at once."""

from __future__ import annotations

import time

import pytest
import torch
from scan_cases import scan_inputs

from mambakit import ops
from mambakit.ops import backends, measured
from mambakit.ops.torch_scan import selective_scan_torch

CALLS: list[str] = []


def slow_scan(*args, **kwargs):
    CALLS.append("slow")
    time.sleep(0.02)
    return selective_scan_torch(*args, **kwargs)


def quick_scan(*args, **kwargs):
    CALLS.append("quick")
    return selective_scan_torch(*args, **kwargs)


def broken_scan(*args, **kwargs):
    CALLS.append("broken")
    raise RuntimeError("no kernel for this GPU")


def stand_in(name: str, function: str) -> backends.Backend:
    return backends.Backend(
        name,
        "a stand-in",
        lambda device: None,
        {"selective_scan": f"test_measured:{function}"},
        auto_ops=frozenset({"selective_scan"}),
        measured=True,
    )


@pytest.fixture
def registry(monkeypatch):
    """The registry as auto sees it: broken, slow and quick stand-ins first (in that order), then the real ones."""
    stand_ins = [stand_in("broken", "broken_scan"), stand_in("slow", "slow_scan"), stand_in("quick", "quick_scan")]
    monkeypatch.setattr(backends, "_REGISTRY", {b.name: b for b in stand_ins} | backends._REGISTRY)
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    measured.forget_measurements()
    CALLS.clear()
    yield
    measured.forget_measurements()


def inputs(length: int = 37) -> dict[str, torch.Tensor]:
    return {k: v.float().requires_grad_() for k, v in scan_inputs(2, 8, 4, length, "shared", seed=1).items()}


def test_auto_takes_the_measured_fastest_and_measures_each_shape_once(registry):
    rng = torch.random.get_rng_state()
    out = ops.selective_scan(**inputs(), delta_softplus=True)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the timing's random inputs have their own generator
    (key, choice), *others = ops.measurements().items()
    assert not others and choice.chosen == "quick"
    assert key[2].length == 64 and key[2].grad  # 37 steps, timed at the next power of two, with the backward
    assert choice.milliseconds["slow"] > choice.milliseconds["quick"]
    assert choice.milliseconds["broken"] is None and "no kernel" in choice.errors["broken"]
    torch.testing.assert_close(out, selective_scan_torch(**inputs(), delta_softplus=True))

    CALLS.clear()
    ops.selective_scan(**inputs(50), delta_softplus=True)  # the same bucket: no new measurement
    assert CALLS == ["quick"]
    with torch.no_grad():  # no gradients is another shape
        ops.selective_scan(**inputs(), delta_softplus=True)
    assert len(ops.measurements()) == 2


def test_no_measurement_where_nothing_can_be_timed(registry, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    u, A, B = torch.zeros(1, 8, 5), torch.zeros(8, 4), torch.zeros(1, 4, 5)
    shape = measured.scan_shape(u, u, A, B, B, None, None, None, True, None)
    assert ops.resolve_backend("auto", torch.device("cpu"), shape=shape).name == "broken"  # first in the order
    assert ops.measurements() == {} and CALLS == []


def test_a_pinned_backend_is_not_measured(registry, monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "quick")
    ops.selective_scan(**inputs(), delta_softplus=True)
    assert CALLS == ["quick"] and ops.measurements() == {}
    ops.selective_scan(**inputs(), delta_softplus=True, backend="slow")
    assert CALLS == ["quick", "slow"] and ops.measurements() == {}


def test_the_fused_mixer_asks_for_its_layer_shape(registry):
    from mambakit.nn import Mamba

    mixer = Mamba(16, d_state=4)
    mixer.fuse_inner = True
    parts = mixer._fused_scan_parts(torch.zeros(64, 3 * 29, requires_grad=True), None, 3)
    assert parts is None  # the stand-ins have no forward/backward pair: the mixer runs the separate ops
    ((_, op, shape),) = ops.measurements()
    assert (op, shape) == ("selective_scan", measured.layer_scan_shape(3, 32, 29, 4, torch.float32))
    assert shape.length == 32 and shape.has_z and shape.grad and not shape.initial_state


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_every_usable_kernel_is_timed_and_the_fastest_runs():
    usable = [name for name, reason in ops.available_backends("cuda").items() if reason is None]
    timed = [name for name in ("mamba_ssm", "triton", "cuda") if name in usable]
    if len(timed) < 2:
        pytest.skip(f"fewer than two GPU scan backends here: {usable}")
    measured.forget_measurements()
    leaves = {
        k: v.to("cuda", torch.bfloat16 if k in ("u", "delta", "z") else torch.float32).requires_grad_()
        for k, v in scan_inputs(4, 256, 16, 1000, "shared", initial=False, seed=2).items()
    }
    ops.selective_scan(**leaves, delta_softplus=True).sum().backward()
    ((_, _, shape), choice), *_ = ops.measurements().items()
    assert shape.length == 1024 and shape.dtype == torch.bfloat16 and shape.grad
    assert set(choice.milliseconds) == set(timed) and not choice.errors, choice
    assert choice.chosen == min(choice.milliseconds, key=lambda name: choice.milliseconds[name] or float("inf"))
