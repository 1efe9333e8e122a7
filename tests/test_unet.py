"""The pooled (SaShiMi-style) U-Net: the streaming step gives forward's outputs position by position across many
pooling boundaries, the network is causal, and any length works."""

from __future__ import annotations

import pytest
import torch

from mambakit.nn import PooledUNet


def _unet(**changes) -> PooledUNet:
    torch.manual_seed(0)
    options = {
        "d_model": 8,
        "n_layers": 1,
        "pools": (2, 3),
        "expand": 2,
        "d_state": 4,
        "selective": (False, True, True),
        "scan_backend": "torch",
    }
    model = PooledUNet(**{**options, **changes}).eval()
    with torch.no_grad():  # the UpPool shift leaves the first outputs zero at initialisation: move every weight
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("pools", [(2, 3), (4, 4), (3,)])
def test_step_equals_forward_across_pool_boundaries(pools):
    model = _unet(pools=pools, selective=True)
    x = torch.randn(2, 4 * model.stride + 5, 8)  # several coarse steps, and a partial one at the end
    with torch.no_grad():
        expected = model(x)
        state = model.allocate_state(2)
        stepped = torch.stack([model.step(x[:, t], state) for t in range(x.shape[1])], dim=1)
    assert (stepped - expected).abs().max() < 1e-5


def test_mixed_lti_and_selective_levels_step_equals_forward():
    model = _unet()
    x = torch.randn(1, 3 * model.stride, 8)
    with torch.no_grad():
        expected = model(x)
        state = model.allocate_state(1)
        stepped = torch.stack([model.step(x[:, t], state) for t in range(x.shape[1])], dim=1)
    assert (stepped - expected).abs().max() < 1e-5


def test_causal_output_at_t_ignores_inputs_after_t():
    model = _unet(pools=(4, 4))
    x = torch.randn(1, 64, 8)
    changed = x.clone()
    changed[:, 37:] = torch.randn(1, 27, 8)
    with torch.no_grad():
        before, after = model(x), model(changed)
    assert torch.equal(before[:, :37], after[:, :37])
    assert not torch.allclose(before[:, 37:], after[:, 37:])


def test_any_length_is_padded_invisibly_and_bad_settings_are_refused():
    model = _unet(pools=(4, 4))
    x = torch.randn(1, 50, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), model(torch.cat([x, torch.randn(1, 14, 8)], 1))[:, :50], atol=1e-6)
    with pytest.raises(ValueError, match="one value per level"):
        PooledUNet(pools=(4, 4), selective=(True, False))
