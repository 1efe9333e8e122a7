"""The Mamba backbone: (embedding) -> n_layer pre-norm residual Mamba blocks -> final norm."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..nn import Block, Mamba, MambaLayerState, create_norm
from .config import MambaConfig


@dataclass
class MambaState:
    """Recurrent state of a whole backbone: one MambaLayerState per layer."""

    layers: list[MambaLayerState]

    def detach(self) -> MambaState:
        """The same state cut from the autograd graph."""
        return MambaState([layer.detach() for layer in self.layers])


class MambaModel(nn.Module):
    """Backbone over token ids (when config.vocab_size > 0) or over embeddings (any domain's features).

    Parameter names follow state-spaces/mamba (`embedding`, `layers.{i}.mixer`, `layers.{i}.norm`, `norm_f`).
    """

    def __init__(self, config: MambaConfig, scan_backend: str = "auto", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.embedding = (
            nn.Embedding(config.padded_vocab_size, config.d_model, **factory) if config.vocab_size > 0 else None
        )
        self.layers = nn.ModuleList(
            Block(
                Mamba(
                    config.d_model, config.d_state, config.d_conv, config.expand, config.dt_rank, config.dt_min,
                    config.dt_max, config.dt_init, config.dt_scale, config.dt_init_floor, config.conv_bias,
                    config.bias, config.selective, scan_backend, **factory,
                ),
                create_norm(config.d_model, config.rms_norm, config.norm_epsilon, **factory),
                config.residual_in_fp32,
            )
            for _ in range(config.n_layer)
        )
        self.norm_f = create_norm(config.d_model, config.rms_norm, config.norm_epsilon, **factory)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """mamba-ssm's initialisation: zero linear biases (except dt), normal embeddings, and out_proj
        rescaled by 1/sqrt(n_layer) so the residual stream's variance does not grow with depth."""
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, Mamba) and self.config.rescale_prenorm_residual:
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                module.out_proj.weight /= math.sqrt(self.config.n_layer)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward instead of storing its activations (long sequences)."""
        self.gradient_checkpointing = enable

    def allocate_state(self, batch: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> MambaState:
        """Zero recurrent state for `batch` sequences."""
        return MambaState([layer.mixer.allocate_state(batch, device, dtype) for layer in self.layers])

    def _embed(self, input_ids: Tensor | None, inputs_embeds: Tensor | None) -> Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            return inputs_embeds
        if self.embedding is None:
            raise ValueError("this backbone has no embedding (vocab_size = 0): pass inputs_embeds")
        return self.embedding(input_ids)

    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                state: MambaState | None = None) -> Tensor:
        """input_ids (b, l) or inputs_embeds (b, l, d_model) -> hidden states (b, l, d_model).
        With `state`, continue from it and leave the final state in it."""
        hidden, residual = self._embed(input_ids, inputs_embeds), None
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else state.layers[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and layer_state is None:
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, layer_state)
        return self._final_norm(hidden, residual)

    def step(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, *,
             state: MambaState) -> Tensor:
        """One position: input_ids (b,) or inputs_embeds (b, d_model) -> (b, d_model); `state` updated."""
        hidden, residual = self._embed(input_ids, inputs_embeds), None
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            hidden, residual = layer.step(hidden, residual, layer_state)
        return self._final_norm(hidden, residual)

    def _final_norm(self, hidden: Tensor, residual: Tensor | None) -> Tensor:
        residual = hidden if residual is None else residual + hidden
        return self.norm_f(residual.to(self.norm_f.weight.dtype))
