"""SS2D (VMamba's 2-D selective-scan layer) against a direct float64 oracle: four separate sequential scans, one per
direction with that direction's slice of every stacked parameter, merged back by hand; outputs and every gradient,
channel-first and channel-last."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambakit.nn import SS2D, no_weight_decay_names
from mambakit.ops.reference import selective_scan_ref


def _oracle(layer: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written out direction by direction from the VMamba description (channel-first input)."""
    x = F.conv2d(x, layer.in_proj.weight[:, :, None, None])
    x = F.silu(layer.conv2d(x))
    batch, inner, height, width = x.shape
    rows, columns = x.flatten(2), x.transpose(2, 3).flatten(2)
    sequences = [rows, columns, rows.flip(-1), columns.flip(-1)]
    outputs = []
    for k, u in enumerate(sequences):
        x_dbl = torch.einsum("cd,bdl->bcl", layer.x_proj_weight[k], u)
        dt, B, C = x_dbl.split([layer.dt_rank, layer.d_state, layer.d_state], dim=1)
        delta = torch.einsum("dr,brl->bdl", layer.dt_projs_weight[k], dt)
        rows_k = slice(k * inner, (k + 1) * inner)
        outputs.append(
            selective_scan_ref(
                u,
                delta,
                -torch.exp(layer.A_logs[rows_k]),
                B,
                C,
                layer.Ds[rows_k],
                None,
                layer.dt_projs_bias[k],
                delta_softplus=True,
            )
        )
    merged = (outputs[0] + outputs[2].flip(-1)).view(batch, inner, height, width)
    merged = merged + (outputs[1] + outputs[3].flip(-1)).view(batch, inner, width, height).transpose(2, 3)
    normed = F.layer_norm(merged.permute(0, 2, 3, 1), (inner,), layer.out_norm.weight, layer.out_norm.bias)
    return F.linear(normed, layer.out_proj.weight).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("ssm_ratio", "d_state", "height", "width"), [(1.0, 1, 5, 7), (2.0, 4, 6, 3)])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_ss2d_matches_the_direction_by_direction_oracle(ssm_ratio, d_state, height, width, backend):
    torch.manual_seed(0)
    layer = SS2D(24, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=backend).double()
    with torch.no_grad():  # away from the initial values, so every parameter matters
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(2, 24, height, width, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 24, height, width, dtype=torch.float64)

    def outputs_and_grads(fn):
        for parameter in layer.parameters():
            parameter.grad = None
        x.grad = None
        out = fn(x)
        out.backward(grad)
        return [out.detach(), x.grad.clone(), *[p.grad.clone() for p in layer.parameters()]]

    actual, expected = outputs_and_grads(layer), outputs_and_grads(lambda x: _oracle(layer, x))
    for name, a, e in zip(["out", "x", *[n for n, _ in layer.named_parameters()]], actual, expected, strict=True):
        error = ((a - e).norm() / e.norm().clamp(min=1e-30)).item()
        assert error < 1e-10, (name, error)


def test_channel_last_layer_equals_channel_first_with_the_same_weights():
    torch.manual_seed(0)
    first = SS2D(16, ssm_ratio=2.0, scan_backend="torch")
    last = SS2D(16, ssm_ratio=2.0, channel_first=False, scan_backend="torch")
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 16, 4, 9)
    expected = first(x)
    assert torch.allclose(last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), expected, atol=1e-5)


def test_parameters_have_vmamba_shapes_and_ssm_ones_skip_weight_decay():
    layer = SS2D(96)  # VMamba-T stage 0: d_inner 96, dt_rank 6, d_state 1
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "in_proj.weight": (96, 96),
        "conv2d.weight": (96, 1, 3, 3),
        "x_proj_weight": (4, 8, 96),
        "dt_projs_weight": (4, 96, 6),
        "dt_projs_bias": (4, 96),
        "A_logs": (384, 1),
        "Ds": (384,),
        "out_norm.weight": (96,),
        "out_norm.bias": (96,),
        "out_proj.weight": (96, 96),
    }
    assert no_weight_decay_names(layer) == {"dt_projs_bias", "A_logs", "Ds"}
