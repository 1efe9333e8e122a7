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
