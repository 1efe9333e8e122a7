"""The causal attention mixer: forward equals a float64 softmax-attention oracle, rotary positions are relative,
and the KV-cache paths (prefill in pieces, one-position steps) reproduce the whole forward."""

from __future__ import annotations

import math

import pytest
import torch

from mambakit.nn.attention import CausalSelfAttention, rotate


def _oracle(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out: q k^T / sqrt(d) with -inf above the diagonal."""
    batch, length, _ = x.shape
    qkv = layer.in_proj(x).view(batch, length, 3, layer.n_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if layer.positions == "rope":
        positions = torch.arange(length)
        q, k = rotate(q, positions, layer.rope_base), rotate(k, positions, layer.rope_base)
    scores = q @ k.transpose(-1, -2) / math.sqrt(layer.head_dim)
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return layer.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


@pytest.mark.parametrize("positions", ["rope", "none"])
def test_forward_equals_the_oracle_and_is_causal(positions):
    torch.manual_seed(0)
    layer = CausalSelfAttention(16, n_heads=4, positions=positions, bias=True).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, _oracle(layer, x), atol=1e-12, rtol=1e-10)
    changed = x.clone()
    changed[:, 7:] += 1.0
    torch.testing.assert_close(layer(changed)[:, :7], out[:, :7], atol=1e-12, rtol=1e-10)
    assert not torch.allclose(layer(changed)[:, 7:], out[:, 7:])


def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        return float((rotate(q, torch.tensor([m]), 100.0) * rotate(k, torch.tensor([n]), 100.0)).sum())

    assert score(5, 2) == pytest.approx(score(103, 100), rel=1e-9)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    assert torch.linalg.norm(rotate(q, torch.tensor([7]), 100.0)) == pytest.approx(float(torch.linalg.norm(q)))


@pytest.mark.parametrize("positions", ["rope", "none"])
def test_cache_prefill_and_steps_reproduce_forward(positions):
    torch.manual_seed(0)
    layer = CausalSelfAttention(16, n_heads=2, positions=positions).eval()
    x = torch.randn(3, 13, 16)
    with torch.no_grad():
        expected = layer(x)
        state = layer.allocate_state(3, max_length=16)
        pieces = [layer(x[:, :5], state), layer(x[:, 5:9], state)]
        pieces += [layer.step(x[:, t], state)[:, None] for t in range(9, 13)]
        assert int(state.length) == 13
        torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)
        fresh = layer.allocate_state(3, max_length=13)
        stepped = torch.stack([layer.step(x[:, t], fresh) for t in range(13)], dim=1)
        torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="cache holds 16 positions; 13 are filled and 4 more"):
            layer(x[:, :4], state)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        CausalSelfAttention(10, n_heads=4)
    with pytest.raises(ValueError, match="positions must be one of"):
        CausalSelfAttention(16, positions="alibi")
    with pytest.raises(ValueError, match="even head dimension"):
        CausalSelfAttention(6, n_heads=2)
