"""The Mamba backbone: (embedding) -> n_layer pre-norm residual Mamba blocks -> final norm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..nn import (
    AttentionState,
    BiMamba,
    Block,
    CausalSelfAttention,
    GatedMLP,
    Mamba,
    MambaLayerState,
    NonCausalBlock,
    create_norm,
    padded_reverse_index,
    pool_sequence,
)
from .config import MambaConfig


@dataclass
class MambaState:
    """Recurrent state of a whole backbone: per layer, a MambaLayerState (Mamba) or an AttentionState (KV cache)."""

    layers: list[MambaLayerState | AttentionState]
    position: Tensor | None = None
    """Positions read so far (a long scalar tensor), kept by backbones with learned absolute positions."""

    def detach(self) -> MambaState:
        """The same state cut from the autograd graph."""
        return MambaState([layer.detach() for layer in self.layers], self.position)


class MambaModel(nn.Module):
    """Backbone over token ids (when config.vocab_size > 0) or over embeddings (any domain's features).

    Parameter names follow state-spaces/mamba (`embedding`, `layers.{i}.mixer`, `layers.{i}.norm`, `norm_f`);
    bidirectional mixers hold `mamba_fwd` and `mamba_rev` (as in Caduceus). Non-causal backbones (config.causal
    False) read the whole sequence: they take the attention_mask and have no recurrent state.

    A subclass may lay its hidden states out differently (e.g. one half per DNA strand): it overrides the
    builders `_make_embedding`, `_make_mixer` and `_make_norm`, and the hooks through which every head reads
    the features, `vocabulary_logits`, `fold` and `pool`.
    """

    def __init__(
        self,
        config: MambaConfig,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.embedding = None if config.vocab_size == 0 else self._make_embedding(config, factory)
        # GPT-2's learned absolute positions, added to the input of the first layer.
        self.position_embedding = (
            nn.Embedding(config.max_position_embeddings, config.d_model, device=device, dtype=dtype)
            if config.attn_positions == "learned" and config.attn_layer_idx
            else None
        )
        block = Block if config.causal else NonCausalBlock
        self.layers: nn.ModuleList = nn.ModuleList(
            block(
                self._make_attention(config, factory)
                if index in config.attn_layer_idx
                else self._make_mixer(config, scan_backend, factory),
                self._make_norm(config, factory),
                config.residual_in_fp32,
                GatedMLP(config.d_model, config.d_intermediate, device=device, dtype=dtype)
                if config.d_intermediate
                else None,
                self._make_norm(config, factory) if config.d_intermediate else None,
            )
            for index in range(config.n_layer)
        )
        self.norm_f: nn.Module = self._make_norm(config, factory)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def _make_embedding(self, config: MambaConfig, factory: dict) -> nn.Module:
        return nn.Embedding(config.padded_vocab_size, config.d_model, **factory)

    def _make_mixer(self, config: MambaConfig, scan_backend: str, factory: dict) -> nn.Module:
        def mamba() -> Mamba:
            return Mamba(
                config.d_model,
                config.d_state,
                config.d_conv,
                config.expand,
                config.dt_rank,
                config.dt_min,
                config.dt_max,
                config.dt_init,
                config.dt_scale,
                config.dt_init_floor,
                config.conv_bias,
                config.bias,
                config.selective,
                scan_backend,
                **factory,
            )

        if config.bidirectional:
            return BiMamba(mamba(), mamba(), config.bidirectional_strategy, config.bidirectional_weight_tie)
        return mamba()

    def _make_attention(self, config: MambaConfig, factory: dict) -> nn.Module:
        return CausalSelfAttention(
            config.d_model,
            config.attn_num_heads,
            "none" if config.attn_positions == "learned" else config.attn_positions,
            config.attn_rope_base,
            config.attn_bias,
            **factory,
        )

    def _make_norm(self, config: MambaConfig, factory: dict) -> nn.Module:
        return create_norm(config.d_model, config.rms_norm, config.norm_epsilon, **factory)

    def vocabulary_logits(self, head: nn.Linear, features: Tensor) -> Tensor:
        """Logits over the (padded) vocabulary from features (…, d_model) and a (vocab, d_model) head."""
        return head(features)

    def fold(self, features: Tensor) -> Tensor:
        """Per-position features (b, l, d_model) for a per-position head (token classification)."""
        return features

    def pool(self, features: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
        """One vector (b, d_model) per sequence, over the real positions (see `mambakit.nn.pool_sequence`)."""
        return pool_sequence(features, attention_mask, pooling)

    def _init_weights(self, module: nn.Module) -> None:
        """mamba-ssm's initialisation: zero linear biases (except dt), normal embeddings, and out_proj
        rescaled by 1/sqrt(n_layer) so the residual stream's variance does not grow with depth."""
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif self.config.rescale_prenorm_residual and isinstance(module, Mamba | CausalSelfAttention | GatedMLP):
            output = module.fc2 if isinstance(module, GatedMLP) else module.out_proj
            nn.init.kaiming_uniform_(output.weight, a=math.sqrt(5))
            with torch.no_grad():
                output.weight /= math.sqrt(self.config.n_layer * (2 if self.config.d_intermediate else 1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward instead of storing its activations (long sequences)."""
        self.gradient_checkpointing = enable

    @property
    def max_positions(self) -> int | None:
        """The longest sequence this model reads: its learned position table's size, or None (no limit)."""
        return None if self.position_embedding is None else self.position_embedding.weight.shape[0]

    def allocate_state(
        self,
        batch: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> MambaState:
        """Zero recurrent state for `batch` sequences. Attention layers keep every position's key and value:
        they need `max_length`, the most positions the state will see (prompt and generated tokens)."""
        self._check_recurrent()
        if self.config.attn_layer_idx and max_length is None:
            raise UserError("this model has attention layers: allocate_state needs max_length (the KV cache size)")
        layers = [
            self._block(i).mixer.allocate_state(batch, max_length, device, dtype)
            if i in self.config.attn_layer_idx
            else self._block(i).mixer.allocate_state(batch, device, dtype)
            for i in range(len(self.layers))
        ]
        if self.position_embedding is None:
            return MambaState(layers)
        table = self.position_embedding.weight.shape[0]
        if max_length is not None and max_length > table:
            raise UserError(
                f"max_length {max_length} is past the {table} learned positions of this model (max_position_embeddings)"
            )
        device = device or self.position_embedding.weight.device
        return MambaState(layers, torch.zeros((), dtype=torch.long, device=device))

    def _block(self, index: int) -> Any:
        """Layer `index`, typed loosely: a causal Block or a subclass's own block around its own mixer."""
        return self.layers[index]

    def _embed(self, input_ids: Tensor | None, inputs_embeds: Tensor | None) -> Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise UserError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            return inputs_embeds
        if self.embedding is None:
            raise UserError("this backbone has no embedding (vocab_size = 0): pass inputs_embeds")
        return self.embedding(input_ids)

    def _add_positions(self, hidden: Tensor, state: MambaState | None) -> Tensor:
        """hidden (b, l, d) plus the learned embeddings of its positions, which continue from `state`'s."""
        if self.position_embedding is None:
            return hidden
        length, table = hidden.shape[1], self.position_embedding.weight.shape[0]
        start = 0 if state is None or state.position is None else int(state.position)
        if start + length > table:
            raise UserError(
                f"positions {start}..{start + length - 1} are past the {table} learned positions of this model "
                f"(max_position_embeddings): use shorter sequences, or rotary positions"
            )
        if state is not None and state.position is not None:
            state.position.fill_(start + length)
        return hidden + self.position_embedding(torch.arange(start, start + length, device=hidden.device))

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        state: MambaState | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """input_ids (b, l) or inputs_embeds (b, l, d_model) -> hidden states (b, l, d_model) (a subclass may
        widen them; the hooks above bring them back to d_model).
        With `state`, continue from it and leave the final state in it.

        attention_mask (b, l), 1 on real tokens, must be right padding. A causal backbone does not need it (no
        real token reads the padding after it); a non-causal one uses it to keep padding from real tokens.
        """
        hidden, residual = self._add_positions(self._embed(input_ids, inputs_embeds), state), None
        per_layer: Sequence[MambaLayerState | AttentionState | Tensor | None]
        if self.config.causal:
            per_layer = [None] * len(self.layers) if state is None else state.layers
        else:
            if state is not None:
                self._check_recurrent()
            # What each non-causal block gets instead of a state: computed once, shared by every layer.
            per_layer = [padded_reverse_index(attention_mask)] * len(self.layers)
        for layer, extra in zip(self.layers, per_layer, strict=True):
            # A causal layer's state is updated in place, which a recomputation in the backward would repeat.
            recomputable = extra is None or not self.config.causal
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and recomputable:
                hidden, residual = checkpoint(layer, hidden, residual, extra, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, extra)
        return self._final_norm(hidden, residual)

    def step(
        self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, *, state: MambaState
    ) -> Tensor:
        """One position: input_ids (b,) or inputs_embeds (b, d_model) -> (b, d_model); `state` updated."""
        self._check_recurrent()
        hidden, residual = self._embed(input_ids, inputs_embeds), None
        if self.position_embedding is not None:
            # No host synchronisation: the position is read and advanced on the device (CUDA-graph safe);
            # allocate_state refused a max_length past the table, so the clamp only guards a state used too long.
            assert state.position is not None, "allocate the state with this model's allocate_state"
            position = state.position.clamp(max=self.position_embedding.weight.shape[0] - 1)
            hidden = hidden + self.position_embedding(position)
            state.position.add_(1)
        for index, layer_state in enumerate(state.layers):
            hidden, residual = self._block(index).step(hidden, residual, layer_state)
        return self._final_norm(hidden, residual)

    def _check_recurrent(self) -> None:
        if not self.config.causal:
            raise UserError(
                "non-causal (bidirectional, RC-equivariant) models read the whole sequence at once: they "
                "have no recurrent state or step; run forward on the full sequence"
            )

    def _final_norm(self, hidden: Tensor, residual: Tensor | None) -> Tensor:
        residual = hidden if residual is None else residual + hidden
        return self.norm_f(residual.to(self._norm_dtype()))

    def _norm_dtype(self) -> torch.dtype:
        return next(self.norm_f.parameters()).dtype
