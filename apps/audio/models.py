"""Raw-waveform models over the core's pooled U-Net (`mambakit.nn.PooledUNet`), registered with mambakit.

    AudioLM          next-sample prediction over quantised samples (8-bit mu-law by default: 256 classes), with
                     optional class conditioning (a learned embedding added at every position), and a streaming
                     `step` for generation: O(1) work and state per sample
    AudioClassifier  clip classification: the same backbone, mean-pooled over the real samples

The config records the sample rate and the quantisation (variant included), so a checkpoint says how its ids
map to audio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.models import MambaConfig, ModelOutput, register_architecture, register_config
from mambakit.models.heads import next_token_loss
from mambakit.nn import PooledUNet, UNetState, no_weight_decay_names, pool_sequence
from mambakit.validation import (
    FACTOR_LIMIT,
    LAYER_LIMIT,
    STATE_LIMIT,
    VOCAB_LIMIT,
    WIDTH_LIMIT,
    check_fields,
    check_sizes,
)

from .data import DEFAULT_SAMPLE_RATE, ENCODINGS, MU_LAW_VARIANT

DOMAIN_NAME = "audio"


@register_config("mambakit-audio", domain=DOMAIN_NAME)
@dataclass(frozen=True)
class AudioConfig:
    """The U-Net's shape, the sample vocabulary and what the ids mean."""

    d_model: int = 64
    n_layers: int = 2
    pools: tuple[int, ...] = (4, 4)
    expand: int = 2
    selective: tuple[bool, ...] = (False, True, True)
    """Per level, outermost first: selective Mamba (True) or its time-invariant, S4D-like variant (False)."""
    d_state: int = 16
    vocab_size: int = 256
    num_classes: int = 0
    """Classes to condition on (0: unconditional)."""
    sample_rate: int = DEFAULT_SAMPLE_RATE
    encoding: str = "mu-law"
    """How sample ids map to audio: 8-bit "mu-law" or "linear"."""
    mu_law_variant: str = MU_LAW_VARIANT
    """Which mu-law: torchaudio's fixed-scale one (no per-clip normalisation, mu = 255)."""

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("d_model", "n_layers", "expand", "d_state", "vocab_size", "sample_rate"):
            if getattr(self, name) < 1:
                raise UserError(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if any(pool < 1 for pool in self.pools):
            raise UserError(f"config: pools must be positive integers, got {list(self.pools)}")
        if len(self.selective) != len(self.pools) + 1:
            raise UserError(
                f"config: selective needs {len(self.pools) + 1} values (one per level), got {list(self.selective)}"
            )
        if self.encoding not in ENCODINGS:
            raise UserError(f"config: encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if self.num_classes < 0:
            raise UserError(f"config: num_classes must be an integer >= 0, got {self.num_classes!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pools"], data["selective"] = list(self.pools), list(self.selective)
        return data

    def estimated_parameters(self) -> int:
        """Parameters of an AudioLM over this config (embeddings, every level's Mamba blocks, the pooling layers,
        the LM head), computed without building it, for the sanity limit on configs read from files."""
        levels = len(self.pools) + 1
        widths = [self.d_model * self.expand**level for level in range(levels)]
        total = self.d_model * (2 * self.vocab_size + self.num_classes + 1)  # embeddings, LM head, final norm
        for level, (width, selective) in enumerate(zip(widths, self.selective, strict=True)):
            # The U-Net's blocks are mambakit's default Mamba blocks; a one-layer backbone without embedding
            # counts one of them plus its final norm.
            block = (
                MambaConfig(
                    d_model=width, n_layer=1, vocab_size=0, d_state=self.d_state, selective=selective
                ).estimated_parameters()
                - width
            )
            stages = 1 if level == levels - 1 else 2  # the centre, or a level's down and up stages
            total += stages * self.n_layers * block
        for pool, fine, coarse in zip(self.pools, widths, widths[1:], strict=False):
            total += (pool * fine * coarse + coarse) + (coarse * pool * fine + pool * fine)  # DownPool, UpPool
        return total

    def check_size_limits(self) -> None:
        """Refuse sizes above the sanity limits (`mambakit.validation.check_sizes`), before anything is built."""
        blocks = self.n_layers * (2 * len(self.pools) + 1)
        check_sizes(
            {
                "d_model": (self.d_model, WIDTH_LIMIT),
                "n_layers": (self.n_layers, LAYER_LIMIT),
                "the block count n_layers * (2 * len(pools) + 1)": (blocks, LAYER_LIMIT),
                "pools": (self.pools, FACTOR_LIMIT),
                "expand": (self.expand, FACTOR_LIMIT),
                "the centre's width d_model * expand ** len(pools)": (
                    self.d_model * self.expand ** len(self.pools),
                    WIDTH_LIMIT,
                ),
                "d_state": (self.d_state, STATE_LIMIT),
                "vocab_size": (self.vocab_size, VOCAB_LIMIT),
                "num_classes": (self.num_classes, VOCAB_LIMIT),
            },
            self.estimated_parameters,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioConfig:
        """Build from `to_dict`'s output, as read from a file: unknown keys, values of the wrong type and sizes
        above the sanity limits (`check_size_limits`) raise ValueError naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"config: unknown keys {unknown}; known keys: {', '.join(sorted(known))}")
        config = cls(**data)
        config.check_size_limits()
        return config


class _AudioModel(nn.Module):
    """Embedding of sample ids (plus a class embedding when conditioned) and the pooled U-Net."""

    def __init__(self, config: AudioConfig, labels: Sequence[str] | None = None, scan_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.labels = None if labels is None else tuple(labels)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone = PooledUNet(
            config.d_model,
            config.n_layers,
            config.pools,
            config.expand,
            config.selective,
            config.d_state,
            scan_backend=scan_backend,
        )

    @classmethod
    def from_config(cls, config: AudioConfig, head: Mapping[str, Any], **options: Any) -> _AudioModel:
        model = cls(config, **head, scan_backend=options.get("scan_backend", "auto"))
        return model.to(device=options.get("device"), dtype=options.get("dtype"))

    def head_config(self) -> dict[str, Any]:
        return {} if self.labels is None else {"labels": list(self.labels)}

    def shard_units(self) -> list[nn.Module]:
        """The U-Net's residual blocks."""
        from mambakit.nn import ResidualBlock

        return [module for module in self.modules() if isinstance(module, ResidualBlock)]

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported by the U-Net yet; training proceeds without it."""


@register_architecture(domain=DOMAIN_NAME)
class AudioLM(_AudioModel):
    """Autoregressive waveform model: position t predicts sample t + 1 (labels are shifted inside, as in
    `MambaLMHeadModel`), optionally conditioned on a class (`class_ids`)."""

    def __init__(self, config: AudioConfig, labels: Sequence[str] | None = None, scan_backend: str = "auto") -> None:
        super().__init__(config, labels, scan_backend)
        if config.num_classes and (labels is None or len(labels) != config.num_classes):
            raise UserError(
                f"a model conditioned on {config.num_classes} classes needs their {config.num_classes} label names"
            )
        self.class_embedding = nn.Embedding(config.num_classes, config.d_model) if config.num_classes else None
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def _inputs(self, input_ids: Tensor, class_ids: Tensor | None) -> Tensor:
        hidden = self.embedding(input_ids)
        if self.class_embedding is None:
            if class_ids is not None:
                raise UserError("this model is unconditional: it takes no class_ids (no --label)")
            return hidden
        if class_ids is None:
            raise UserError(f"this model is conditioned on a class: give class_ids (one of {list(self.labels or ())})")
        condition = self.class_embedding(class_ids)
        return hidden + (condition[:, None] if hidden.dim() == 3 else condition)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, class_ids: Tensor | None = None) -> ModelOutput:
        """input_ids (b, L) sample ids -> logits (b, L, vocab_size); labels (b, L), usually input_ids, give the
        next-sample cross-entropy (IGNORE_INDEX positions skipped)."""
        logits = self.lm_head(self.backbone(self._inputs(input_ids, class_ids)))
        return ModelOutput(logits, None if labels is None else next_token_loss(logits, labels))

    def allocate_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> UNetState:
        """A zero streaming state for `batch` sequences."""
        return self.backbone.allocate_state(batch, device, dtype)

    def step(self, input_ids: Tensor, state: UNetState, class_ids: Tensor | None = None) -> Tensor:
        """One sample per sequence: input_ids (b,) -> next-sample logits (b, vocab_size); `state` advanced."""
        return self.lm_head(self.backbone.step(self._inputs(input_ids, class_ids), state))


@register_architecture(domain=DOMAIN_NAME)
class AudioClassifier(_AudioModel):
    """Clip classification: U-Net features mean-pooled over the real samples, then a linear classifier."""

    def __init__(self, config: AudioConfig, labels: Sequence[str] | None = None, scan_backend: str = "auto") -> None:
        if not labels or len(labels) < 2:
            raise UserError("an audio classifier needs the names of at least two classes")
        super().__init__(config, labels, scan_backend)
        self.classifier = nn.Linear(config.d_model, len(labels))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> ModelOutput:
        """input_ids (b, L) with attention_mask (b, L) (right padding) -> logits (b, classes)."""
        features = self.backbone(self.embedding(input_ids))
        logits = self.classifier(pool_sequence(features, attention_mask, "mean"))
        return ModelOutput(logits, None if labels is None else F.cross_entropy(logits.float(), labels))
