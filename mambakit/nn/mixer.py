"""The Mamba mixer (the S6 layer of Gu & Dao 2023), with a recurrent step for decoding and streaming.

    x (b, l, d_model) -> in_proj -> [x, z] (b, d_inner, l) each
    x -> causal depthwise conv (width d_conv) -> silu
    x -> x_proj -> [dt (dt_rank), B (N), C (N)];  dt -> dt_proj (bias added inside the scan, then softplus)
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)     (y * silu(z) is the gate)
    out = out_proj(y)

Parameters and initialisation follow mamba-ssm, so its checkpoints load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_scan_parts, selective_state_update
from ..ops.mamba_inner import as_columns, as_sequences, mamba_inner
from ..ops.measured import layer_scan_shape


@dataclass
class MambaLayerState:
    """Recurrent state of one mixer: the last d_conv-1 conv inputs and the fp32 scan state."""

    conv: Tensor
    """(batch, d_inner, d_conv - 1)"""
    ssm: Tensor
    """(batch, d_inner, d_state), fp32"""
    decay_rates: Tensor | None = None
    """(d_inner, d_state) fp32: A = -exp(A_log) when the state was allocated, which `step` uses without
    gradients instead of recomputing it (two or three kernels per layer and token). Allocate a new state after
    changing the weights."""

    def detach(self) -> MambaLayerState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return MambaLayerState(self.conv.detach(), self.ssm.detach(), self.decay_rates)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that AdamW must not decay, as each module class lists them in its
    `NO_WEIGHT_DECAY` (the SSM's A_log, D, dt bias). Read from the structure, not from tags on the parameters,
    so a copy (copy.deepcopy, FSDP) answers the same."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(type(module), "NO_WEIGHT_DECAY", ())
        if isinstance(getattr(module, name, None), nn.Parameter)
    }


def _project_columns(layer: nn.Module, columns: Tensor, with_bias: bool = True) -> Tensor:
    """`layer` applied to every column of `columns` (features, n): one GEMM for a plain nn.Linear; a wrapped one
    (a PEFT LoRA adapter, a quantized layer) through its own forward, so what it adds is not skipped. A wrapped
    layer's bias is always in its output."""
    if type(layer) is not nn.Linear:
        return cast(Tensor, layer(columns.t())).t()
    projected = layer.weight @ columns
    return projected + layer.bias[:, None] if with_bias and layer.bias is not None else projected


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(
    shape: int | tuple[int, ...], dt_min: float, dt_max: float, dt_init_floor: float, device: torch.device | None = None
) -> Tensor:
    """Mamba's delta bias: step sizes drawn log-uniformly in [dt_min, dt_max] (at least dt_init_floor), passed
    through the inverse of softplus, so that softplus(bias) starts at those steps. fp32, of `shape`."""
    dt = torch.exp(torch.rand(shape, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(
        min=dt_init_floor
    )
    return _inverse_softplus(dt)


def s4d_real_log_A(channels: int, d_state: int, device: torch.device | None = None) -> Tensor:
    """S4D-real initialisation of A_log: A = -(1, 2, ..., N) for every channel, (channels, N) fp32."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(channels, 1))


class Mamba(nn.Module):
    """Selective state space mixer; `selective=False` gives the time-invariant (S4D-like) variant."""

    NO_WEIGHT_DECAY: ClassVar[tuple[str, ...]] = ("A_log", "D", "dt_bias")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        selective: bool = True,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.selective = selective
        self.scan_backend = scan_backend
        self.fuse_inner: bool | None = None
        """Run the training path as one fused function where it applies (`mambakit.ops.mamba_inner`: two
        activations a layer fewer kept for the backward, for one more conv and dt_proj product in the backward):
        None (default) on CUDA only, where activations bound the batch (on a CPU the separate ops measured
        5-10% faster and memory is seldom the limit), True everywhere, False nowhere."""

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **factory
        )
        dt_bias = dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor, device)
        if selective:
            self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
            self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            dt_init_std = self.dt_rank**-0.5 * dt_scale
            with torch.no_grad():
                if dt_init == "constant":
                    self.dt_proj.weight.fill_(dt_init_std)
                else:
                    self.dt_proj.weight.uniform_(-dt_init_std, dt_init_std)
                # softplus(bias) lands in [dt_min, dt_max]: the initial step sizes of the paper.
                self.dt_proj.bias.copy_(dt_bias)
            self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        else:
            self.B = nn.Parameter(torch.randn(self.d_inner, d_state, **factory) / math.sqrt(d_state))
            self.C = nn.Parameter(torch.randn(self.d_inner, d_state, **factory) / math.sqrt(d_state))
            self.dt_bias = nn.Parameter(dt_bias.to(dtype or torch.float32))
        self.A_log = nn.Parameter(s4d_real_log_A(self.d_inner, d_state, device))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def allocate_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MambaLayerState:
        """Zero state for `batch` sequences (conv inputs in `dtype`, scan state in fp32)."""
        weight = self.in_proj.weight
        device = device or weight.device
        return MambaLayerState(
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype or weight.dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32),
            decay_rates=-torch.exp(self.A_log.detach().float()).to(device),
        )

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """From conv outputs x (..., d_inner): delta (without bias), B, C and the delta bias (None when a wrapped
        dt_proj has added it)."""
        if not self.selective:
            return torch.zeros_like(x), self.B, self.C, self.dt_bias
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if type(self.dt_proj) is not nn.Linear:  # a wrapped layer (e.g. LoRA) adds the bias itself
            return self.dt_proj(dt), B, C, None
        return F.linear(dt, self.dt_proj.weight), B, C, self.dt_proj.bias

    def forward(self, hidden_states: Tensor, state: MambaLayerState | None = None) -> Tensor:
        """hidden_states (b, l, d_model) -> (b, l, d_model). With `state`, continue from it and leave the
        state after the last position in it (its tensors are replaced, so autograd can flow through)."""
        batch, length, _ = hidden_states.shape
        # Between in_proj and out_proj every activation is a (channels, b*l) matrix, which the conv and the scan
        # see as (b, channels, l) with unit-stride steps, as in mamba-ssm's mamba_inner_fn: each projection is
        # one plain GEMM and no (b, l, d) <-> (b, d, l) transposing copy is made, forward or backward.
        columns = hidden_states.reshape(batch * length, -1).t()
        xz = _project_columns(self.in_proj, columns)
        fused = self._fused_scan_parts(xz, state, batch)
        if fused is not None:
            y = mamba_inner(
                xz,
                self.conv1d.weight.squeeze(1),
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.dt_proj.bias,
                self.A_log,
                self.D,
                batch,
                fused,
                conv_backend=self.scan_backend,
            )
            return self._out_proj(y, batch, length)
        x, z = (as_sequences(t, batch, length) for t in xz.split(self.d_inner))
        conv_weight = self.conv1d.weight.squeeze(1)
        if state is None:
            x = cast(Tensor, causal_conv1d(x, conv_weight, self.conv1d.bias, "silu", backend=self.scan_backend))
        else:
            x, state.conv = cast(
                tuple[Tensor, Tensor],
                causal_conv1d(
                    x,
                    conv_weight,
                    self.conv1d.bias,
                    "silu",
                    initial_states=state.conv,
                    return_final_states=True,
                    backend=self.scan_backend,
                ),
            )
        if self.selective:
            x_dbl = _project_columns(self.x_proj, as_columns(x))
            dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state])
            delta = as_sequences(_project_columns(self.dt_proj, dt, with_bias=False), batch, length)
            B, C = as_sequences(B, batch, length), as_sequences(C, batch, length)
            delta_bias = self.dt_proj.bias if type(self.dt_proj) is nn.Linear else None
        else:
            delta, B, C, delta_bias = torch.zeros_like(x), self.B, self.C, self.dt_bias
        scan = selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B,
            C,
            self.D.float(),
            z,
            None if delta_bias is None else delta_bias.float(),
            delta_softplus=True,
            initial_state=None if state is None else state.ssm,
            return_last_state=state is not None,
            backend=self.scan_backend,
        )
        if state is not None:
            y, state.ssm = scan
        else:
            y = cast(Tensor, scan)
        return self._out_proj(y, batch, length)

    def _fused_scan_parts(self, xz: Tensor, state: MambaLayerState | None, batch: int) -> Any:
        """The scan backend's forward/backward pair when the training path can run as one fused function
        (`mambakit.ops.mamba_inner`, which keeps two activations a layer fewer), else None: with a state to
        continue from, without gradients, for a time-invariant layer, a wrapped x_proj/dt_proj (e.g. LoRA, whose
        own forward must run) or float64."""
        plain = type(self.x_proj) is nn.Linear and type(self.dt_proj) is nn.Linear if self.selective else False
        wanted = xz.is_cuda if self.fuse_inner is None else self.fuse_inner
        if not wanted or state is not None or not plain or xz.dtype == torch.float64 or xz.shape[1] == 0:
            return None
        if not torch.is_grad_enabled() or not (xz.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None
        shape = layer_scan_shape(batch, self.d_inner, xz.shape[1] // batch, self.d_state, xz.dtype)
        return selective_scan_parts(self.scan_backend, xz.device, shape)

    def _out_proj(self, y: Tensor, batch: int, length: int) -> Tensor:
        rows = as_columns(y).t()
        if type(self.out_proj) is not nn.Linear:  # a wrapped layer (e.g. LoRA): its own forward
            return cast(Tensor, self.out_proj(rows)).view(batch, length, -1)
        return F.linear(rows, self.out_proj.weight, self.out_proj.bias).view(batch, length, -1)

    def step(self, hidden_states: Tensor, state: MambaLayerState) -> Tensor:
        """One position: hidden_states (b, d_model) -> (b, d_model); `state` is updated in place."""
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = causal_conv1d_update(
            x, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", backend=self.scan_backend
        )
        delta, B, C, delta_bias = self._ssm_inputs(x)
        if not self.selective:
            B, C = B.expand(x.shape[0], -1, -1), C.expand(x.shape[0], -1, -1)
        # D and the bias go in as they are: every backend computes the step in fp32.
        A = state.decay_rates
        if A is None or (torch.is_grad_enabled() and self.A_log.requires_grad):
            A = -torch.exp(self.A_log.float())
        y = selective_state_update(
            state.ssm, x, delta, A, B, C, self.D, z, delta_bias, dt_softplus=True, backend=self.scan_backend
        )
        return self.out_proj(y)
