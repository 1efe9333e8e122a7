"""Mistakes through the Python API are a ValueError naming the argument, not a raw torch error or a silent
acceptance (#15); edge cases with an answer get it (a convolution of nothing)."""

from __future__ import annotations

import pytest
import torch

from mambakit import ops
from mambakit.models import MambaConfig, MambaLMHeadModel, SamplingConfig, generate, load_model, save_pretrained


def test_an_empty_batch_in_the_scan_is_refused():
    u = torch.randn(0, 4, 5)
    with pytest.raises(ValueError, match="u must hold at least one sequence"):
        ops.selective_scan(u, u.clone(), -torch.rand(4, 2), torch.randn(0, 2, 5), torch.randn(0, 2, 5))


def test_convolution_widths_and_empty_sequences():
    with pytest.raises(ValueError, match="weight must have a width of at least 1"):
        ops.causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 0))
    before = torch.randn(1, 4, 3)
    out, final = ops.causal_conv1d(
        torch.randn(1, 4, 0), torch.randn(4, 4), initial_states=before, return_final_states=True
    )
    assert out.shape == (1, 4, 0) and torch.equal(final, before)
    assert ops.causal_conv1d(torch.randn(2, 4, 0), torch.randn(4, 4)).shape == (2, 4, 0)


def test_sampling_and_generation_arguments(tmp_path):
    for name in ("temperature", "repetition_penalty", "top_p", "min_p"):
        with pytest.raises(ValueError, match=name):
            SamplingConfig(**{name: float("nan")})
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=10)).eval()
    with pytest.raises(ValueError, match="outside the model's vocabulary 0..9"):
        generate(model, torch.tensor([[3, 12]]), 2)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, torch.tensor([[-1]]), 2)
    saved = save_pretrained(model, tmp_path / "m")
    with pytest.raises(ValueError, match="scan_backend 'nope' is unknown; choose one of: auto, "):
        load_model(saved, scan_backend="nope")


def scan_arguments() -> dict[str, torch.Tensor]:
    return {
        "u": torch.randn(2, 4, 5),
        "delta": torch.rand(2, 4, 5),
        "A": -torch.rand(4, 3),
        "B": torch.randn(2, 3, 5),
        "C": torch.randn(2, 3, 5),
        "D": torch.randn(4),
    }


def step_arguments() -> dict[str, torch.Tensor]:
    return {
        "state": torch.randn(2, 4, 3),
        "x": torch.randn(2, 4),
        "dt": torch.rand(2, 4),
        "A": -torch.rand(4, 3),
        "B": torch.randn(2, 3),
        "C": torch.randn(2, 3),
    }


@pytest.mark.parametrize(
    ("op", "arguments", "name"),
    [
        (ops.selective_scan, scan_arguments, "B"),
        (ops.selective_scan, scan_arguments, "D"),
        (ops.selective_state_update, step_arguments, "x"),
    ],
)
def test_a_list_for_a_tensor_is_refused_by_name(op, arguments, name):
    given = arguments()
    with pytest.raises(ValueError, match=rf"^{op.__name__}: {name} must be a torch.Tensor, got list; convert it"):
        op(**{**given, name: given[name].tolist()})


def test_other_ops_refuse_lists_and_integer_tensors_by_name():
    with pytest.raises(ValueError, match="^causal_conv1d: weight must be a torch.Tensor, got list"):
        ops.causal_conv1d(torch.randn(1, 4, 5), [[1.0, 2.0]] * 4)
    with pytest.raises(
        ValueError, match=r"^causal_conv1d_update: x must be a floating-point tensor \(.*\), got torch.int64"
    ):
        ops.causal_conv1d_update(torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4, 3), torch.randn(4, 4))
    with pytest.raises(ValueError, match="^add_rms_norm: residual must be a torch.Tensor, got tuple"):
        ops.add_rms_norm(torch.randn(2, 8), (1.0,), torch.ones(8))
    with pytest.raises(ValueError, match=r"^cross_scan: x must be a floating-point tensor \(.*\), got torch.bool"):
        ops.cross_scan(torch.ones(1, 2, 3, 3, dtype=torch.bool))


def test_integer_and_complex_inputs_are_refused_by_name():
    with pytest.raises(
        ValueError, match=r"^selective_scan: z must be a floating-point tensor \(float32, .*\), got torch.int32"
    ):
        ops.selective_scan(**scan_arguments(), z=torch.ones(2, 4, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="^selective_scan: A must be real, got torch.complex64: complex tensors are"):
        ops.selective_scan(**{**scan_arguments(), "A": torch.randn(4, 3, dtype=torch.complex64)})
    with pytest.raises(
        ValueError, match=r"^selective_state_update: dt must be a floating-point tensor \(.*\), got torch.int64"
    ):
        ops.selective_state_update(**{**step_arguments(), "dt": torch.ones(2, 4, dtype=torch.long)})


def test_tensors_on_two_devices_are_refused_by_name():
    """(The meta device stands in for a GPU: a CPU-only machine has a second device too.)"""
    message = r"all inputs must be on one device, but u is on cpu and C on meta; move them with \.to\(device\)"
    with pytest.raises(ValueError, match="^selective_scan: " + message):
        ops.selective_scan(**{**scan_arguments(), "C": torch.randn(2, 3, 5, device="meta")})
    with pytest.raises(ValueError, match="^selective_state_update: all inputs must be on one device, but state is"):
        ops.selective_state_update(**step_arguments(), z=torch.randn(2, 4, device="meta"))
    with pytest.raises(ValueError, match="^causal_conv1d: all inputs must be on one device, but x is on cpu and bias"):
        ops.causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 4), torch.randn(4, device="meta"))


def test_a_decode_state_of_another_dtype_is_refused():
    with pytest.raises(
        ValueError, match="^state must be float32, float16 or bfloat16 \\(or float64\\), got torch.float8"
    ):
        ops.selective_state_update(**{**step_arguments(), "state": torch.zeros(2, 4, 3).to(torch.float8_e4m3fn)})


def test_bad_state_batch_indices_are_refused():
    arguments = {**step_arguments(), "state": torch.zeros(6, 4, 3)}
    with pytest.raises(ValueError, match="^state_batch_indices must be an int32 or int64 tensor, got torch.float32"):
        ops.selective_state_update(**arguments, state_batch_indices=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^state_batch_indices must have shape \(batch,\) = \(2,\), one row of state"):
        ops.selective_state_update(**arguments, state_batch_indices=torch.tensor([0, 1, 2]))
    before = arguments["state"].clone()
    with pytest.raises(ValueError, match=r"^state_batch_indices must index rows of state \(0\.\.5, or negative"):
        ops.selective_state_update(**arguments, state_batch_indices=torch.tensor([0, 6]))
    assert torch.equal(arguments["state"], before)
