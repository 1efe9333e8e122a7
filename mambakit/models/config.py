"""MambaConfig: the architecture of a Mamba backbone, as plain data with a JSON round trip.

It reads three dialects: its own keys, state-spaces `config.json` (d_model, n_layer, ssm_cfg, ...) and
Hugging Face `MambaConfig` (hidden_size, state_size, ...). Imports neither torch nor any kernel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError
from ..jsonfiles import load_json_object
from ..validation import (
    FACTOR_LIMIT,
    LAYER_LIMIT,
    STATE_LIMIT,
    VOCAB_LIMIT,
    WIDTH_LIMIT,
    check_fields,
    check_sizes,
    checked_value,
    field_types,
)
from .registry import register_config

#: Keys a checkpoint's config.json carries beside the architecture (written by mambakit.models.checkpoint).
META_KEYS = ("model_type", "config_version", "architecture", "head", "mambakit_version", "domain")
#: The version of the checkpoint config layout that save_pretrained writes. Version 1 (mambakit up to commit
#: 85bf326, no config_version key) kept the genomics app's reverse-complement options in MambaConfig.
CONFIG_VERSION = 2
#: MambaConfig fields of version 1 that moved to a domain's config, with the value that meant "off".
V1_MOVED_FIELDS = {"rc_equivariant": False, "complement_map": None}

#: Hugging Face MambaConfig key -> mambakit key.
_HF_KEYS = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "time_step_rank": "dt_rank",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_init_scheme": "dt_init",
    "time_step_scale": "dt_scale",
    "time_step_floor": "dt_init_floor",
    "use_conv_bias": "conv_bias",
    "use_bias": "bias",
    "layer_norm_epsilon": "norm_epsilon",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_embeddings",
    "initializer_range": "initializer_range",
    "rescale_prenorm_residual": "rescale_prenorm_residual",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}

#: How a bidirectional mixer combines its forward pass and its pass over the flipped sequence (Caduceus names).
BIDIRECTIONAL_STRATEGIES = ("add", "ew_multiply")

#: Position schemes of the attention layers (mambakit.nn.attention.POSITIONS; this module imports no torch).
ATTENTION_POSITIONS = ("rope", "learned", "none")
#: mamba-ssm MHA arguments (attn_cfg) and the values mambakit's attention layers can take.
_ATTN_CFG_FIXED = {"causal": True, "d_conv": 0, "mlp_dim": 0, "rotary_emb_interleaved": False, "softmax_scale": None}


def _attention_fields(attn_cfg: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """mambakit's attention fields from a state-spaces (mamba-ssm) `attn_cfg`; what they cannot express (grouped
    KV heads, partial or interleaved rotary, a conv before attention, a fused MLP) is a ValueError."""
    if not attn_cfg:
        return {}
    cfg = dict(checked_value("attn_cfg", attn_cfg, dict[str, Any]))
    for key, value in _ATTN_CFG_FIXED.items():
        if key in cfg and cfg.pop(key) != value:
            raise UserError(f"config: attn_cfg.{key} = {attn_cfg[key]!r} is not supported (mambakit: {value!r})")

    def take(key: str, annotation: Any, default: Any) -> Any:
        return checked_value(f"attn_cfg.{key}", cfg.pop(key, default), annotation)

    d_model = checked_value("d_model", data.get("d_model", 768), int)
    heads = take("num_heads", int, 8)
    head_dim = take("head_dim", int | None, None) or d_model // max(heads, 1)
    if (take("num_heads_kv", int | None, None) or heads) != heads:
        raise UserError("config: attn_cfg.num_heads_kv != num_heads (grouped KV heads) is not supported")
    if head_dim * heads != d_model:
        raise UserError("config: attn_cfg.head_dim * num_heads must equal d_model")
    rotary = take("rotary_emb_dim", int, 0)
    if rotary not in (0, head_dim):
        raise UserError(f"config: attn_cfg.rotary_emb_dim {rotary} is not supported: 0 or the head dim ({head_dim})")
    biases = {take("qkv_proj_bias", bool, True), take("out_proj_bias", bool, True)}
    if len(biases) != 1:
        raise UserError("config: attn_cfg.qkv_proj_bias and out_proj_bias must be equal")
    fields_out = {
        "attn_num_heads": heads,
        "attn_positions": "rope" if rotary else "none",
        "attn_rope_base": take("rotary_emb_base", float, 10000.0),
        "attn_bias": biases.pop(),
    }
    if cfg:
        raise UserError(f"config: unknown attn_cfg keys {sorted(cfg)}")
    return fields_out


#: state-spaces ssm_cfg keys that are mambakit keys of the same meaning.
_SSM_CFG_KEYS = {
    "d_state",
    "d_conv",
    "expand",
    "dt_rank",
    "dt_min",
    "dt_max",
    "dt_init",
    "dt_scale",
    "dt_init_floor",
    "conv_bias",
    "bias",
}


@register_config("mambakit")
@dataclass(frozen=True)
class MambaConfig:
    """Architecture of a Mamba (S6) backbone and its embedding; validated on construction."""

    model_type: ClassVar[str]

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    selective: bool = True
    """False makes B, C and delta learned constants: a time-invariant, S4D-like layer."""
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    bidirectional: bool = False
    """Each mixer also reads the sequence backwards (BiMamba, as in Caduceus); the model is then not causal."""
    bidirectional_strategy: str = "add"
    """How the two directions combine: "add" or "ew_multiply" (elementwise product)."""
    bidirectional_weight_tie: bool = True
    """The backward mixer shares in_proj and out_proj (most of the parameters) with the forward one."""
    d_intermediate: int = 0
    """Width of a gated MLP after every mixer (mamba-ssm's `d_intermediate`, rounded up to a multiple of 128);
    0: no MLP."""
    attn_layer_idx: tuple[int, ...] = ()
    """Layers whose mixer is causal self-attention instead of Mamba (mamba-ssm's hybrid layout)."""
    attn_num_heads: int = 8
    attn_positions: str = "rope"
    """Positions of a model with attention layers: "rope" (rotary, in each attention layer), "learned" (GPT-2's
    absolute embeddings added to the input, max_position_embeddings of them) or "none"."""
    max_position_embeddings: int = 2048
    """Length of the learned position table (attn_positions "learned"); longer sequences are refused."""
    attn_rope_base: float = 10000.0
    attn_bias: bool = False
    """Biases in the attention projections (mamba-ssm's qkv_proj_bias and out_proj_bias)."""

    def __post_init__(self) -> None:
        check_fields(self)
        for name in (
            "d_model",
            "n_layer",
            "d_state",
            "d_conv",
            "expand",
            "pad_vocab_size_multiple",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 0:
            raise UserError(f"config: vocab_size must be an integer >= 0 (0: no embedding), got {self.vocab_size!r}")
        if self.dt_rank != "auto" and (isinstance(self.dt_rank, str) or self.dt_rank < 1):
            raise UserError(f"config: dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if self.dt_init not in ("random", "constant"):
            raise UserError(f"config: dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise UserError(f"config: need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")
        if self.d_intermediate < 0:
            raise UserError(f"config: d_intermediate must be an integer >= 0, got {self.d_intermediate!r}")
        layers = self.attn_layer_idx
        if any(not 0 <= i < self.n_layer for i in layers) or len(set(layers)) != len(layers):
            raise UserError(
                f"config: attn_layer_idx must hold distinct layer indices in 0..{self.n_layer - 1}, got {list(layers)}"
            )
        if layers:
            if self.bidirectional:
                raise UserError("config: attention layers are causal; a bidirectional model cannot have them")
            if self.attn_positions not in ATTENTION_POSITIONS:
                raise UserError(
                    f"config: attn_positions must be one of {', '.join(ATTENTION_POSITIONS)}, "
                    f"got {self.attn_positions!r}"
                )
            if self.attn_num_heads < 1 or self.d_model % self.attn_num_heads:
                raise UserError(
                    f"config: d_model {self.d_model} must be a multiple of attn_num_heads {self.attn_num_heads}"
                )
        if self.bidirectional_strategy not in BIDIRECTIONAL_STRATEGIES:
            raise UserError(
                f"config: bidirectional_strategy must be one of {', '.join(BIDIRECTIONAL_STRATEGIES)}, "
                f"got {self.bidirectional_strategy!r}"
            )

    @property
    def causal(self) -> bool:
        """Whether position t depends only on positions <= t (false for bidirectional models)."""
        return not self.bidirectional

    @property
    def d_inner(self) -> int:
        """Channels of the selective scan: expand * d_model."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """Rank of the delta projection: ceil(d_model / 16) when 'auto'."""
        return -(-self.d_model // 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to pad_vocab_size_multiple (faster matmuls)."""
        multiple = self.pad_vocab_size_multiple
        return -(-self.vocab_size // multiple) * multiple

    def replace(self, **changes: Any) -> MambaConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def estimated_parameters(self) -> int:
        """Parameters of a language model over this config: the embedding (and the LM head when untied), every
        layer's mixer, norms and MLP, the final norm. Computed without building anything, for the sanity limit on
        configs read from files (`from_dict`); exact for mambakit's MambaLMHeadModel up to the MLP width's
        rounding."""
        d_model, d_inner, d_state = self.d_model, self.d_inner, self.d_state
        norm = d_model if self.rms_norm else 2 * d_model
        in_out = 3 * d_inner * d_model + (2 * d_inner + d_model if self.bias else 0)
        scan = (
            d_inner * (self.resolved_dt_rank + 2 * d_state) + self.resolved_dt_rank * d_inner + d_inner
            if self.selective
            else 2 * d_inner * d_state + d_inner
        )
        per_direction = d_inner * self.d_conv + (d_inner if self.conv_bias else 0) + scan + d_inner * d_state + d_inner
        if self.bidirectional:
            mamba = (in_out if self.bidirectional_weight_tie else 2 * in_out) + 2 * per_direction
        else:
            mamba = in_out + per_direction
        attention = 4 * d_model * d_model + (4 * d_model if self.attn_bias else 0)
        mlp = 3 * d_model * self.d_intermediate + norm if self.d_intermediate else 0
        attention_layers = len(self.attn_layer_idx)
        layers = (self.n_layer - attention_layers) * mamba + attention_layers * attention + self.n_layer * (norm + mlp)
        embedding = self.padded_vocab_size * d_model * (1 if self.tie_embeddings else 2)
        positions = (
            self.max_position_embeddings * d_model if attention_layers and self.attn_positions == "learned" else 0
        )
        return embedding + positions + layers + norm

    def check_size_limits(self) -> None:
        """Refuse sizes above the sanity limits (`mambakit.validation.check_sizes`), before anything is built."""
        limits = {
            "d_model": WIDTH_LIMIT,
            "n_layer": LAYER_LIMIT,
            "vocab_size": VOCAB_LIMIT,
            "pad_vocab_size_multiple": VOCAB_LIMIT,
            "d_state": STATE_LIMIT,
            "d_conv": FACTOR_LIMIT,
            "expand": FACTOR_LIMIT,
            "dt_rank": WIDTH_LIMIT,
            "d_intermediate": 4 * WIDTH_LIMIT,
            "max_position_embeddings": VOCAB_LIMIT,
        }
        check_sizes({name: (getattr(self, name), limit) for name, limit in limits.items()}, self.estimated_parameters)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MambaConfig:
        """Build from mambakit, state-spaces or Hugging Face config keys, as read from a file: every value is
        checked against its field's type, and sizes against the sanity limits (`check_size_limits`). Unknown keys,
        wrong types and sizes above the limits raise ValueError naming the key."""
        config = cls._from_data(dict(data))
        config.check_size_limits()
        return config

    @classmethod
    def _from_data(cls, data: dict[str, Any]) -> MambaConfig:
        if data.get("model_type") == "mamba" or "hidden_size" in data:
            return cls._from_hf(data)
        for key in META_KEYS:
            data.pop(key, None)
        ssm_cfg = dict(checked_value("ssm_cfg", data.pop("ssm_cfg", None), dict[str, Any] | None) or {})
        layer = ssm_cfg.pop("layer", "Mamba1")
        if layer != "Mamba1":
            raise UserError(f"config: ssm_cfg.layer {layer!r} is not supported; mambakit builds Mamba1 layers")
        unknown_ssm = set(ssm_cfg) - _SSM_CFG_KEYS
        if unknown_ssm:
            raise UserError(f"config: unknown ssm_cfg keys {sorted(unknown_ssm)}; known: {sorted(_SSM_CFG_KEYS)}")
        data.update(ssm_cfg)
        data.update(_attention_fields(data.pop("attn_cfg", None), data))
        # A kernel choice, not part of the architecture: results are the same either way.
        data.pop("fused_add_norm", None)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"config: unknown keys {sorted(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        data = asdict(self)
        data["attn_layer_idx"] = list(self.attn_layer_idx)
        return data

    @classmethod
    def _from_hf(cls, data: dict[str, Any]) -> MambaConfig:
        activation = data.get("hidden_act", "silu")
        if activation not in ("silu", "swish"):
            raise UserError(f"config: hidden_act {activation!r} is not supported; Mamba uses silu")
        eos = data.get("eos_token_id")
        if isinstance(eos, list):  # transformers allows several; generation stops at the first
            data = {**data, "eos_token_id": eos[0] if eos else None}
        types_of = field_types(cls)
        # Checked under their Hugging Face names, which are the ones in the user's file.
        mapped = {
            ours: checked_value(theirs, data[theirs], types_of[ours])
            for theirs, ours in _HF_KEYS.items()
            if theirs in data
        }
        # Hugging Face checkpoints store the vocabulary already padded (or not at all): keep it as it is.
        return cls(**mapped, pad_vocab_size_multiple=1)

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> MambaConfig:
        """Read a config JSON file in any of the three dialects."""
        return load_json_object(path, cls.from_dict)
