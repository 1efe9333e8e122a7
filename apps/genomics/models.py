"""Genomics models: the genomics config (a MambaConfig with reverse-complement options), the RC-equivariant
backbone it selects, and the head each task trains.

    causal Mamba            the default; the only kind a causal LM (task "pretrain") can use
    bidirectional=True      BiMamba (Caduceus): a forward and a flipped pass per layer, combined by "add" or
                            "ew_multiply", in/out projections tied or not
    rc_equivariant=True     Caduceus-PS: parameter sharing across the two strands, so the model's output on a
                            reverse complement is the RC of its output (classification: the same logits)

The heads are the core's (`mambakit.models.heads`); registering `genomics_backbone` for `GenomicsMambaConfig`
makes them build an `RCPSMambaModel` when the config asks for RC equivariance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.models import (
    MambaConfig,
    MambaForMaskedLM,
    MambaForSequenceClassification,
    MambaLMHeadModel,
    MambaModel,
    MambaPreTrainedModel,
)
from mambakit.models.registry import register_backbone, register_config

from .rc import RCPSEmbedding, RCPSMixer, RCPSNorm, rc_fold, rc_logits, rc_pool
from .tokenizer import DNATokenizer

DOMAIN_NAME = "genomics"


@register_config("mambakit-genomics", domain=DOMAIN_NAME)
@dataclass(frozen=True)
class GenomicsMambaConfig(MambaConfig):
    """A MambaConfig over a DNA vocabulary with Caduceus' reverse-complement options."""

    rc_equivariant: bool = False
    """Reverse-complement equivariance by parameter sharing (Caduceus-PS): hidden states have 2 * d_model
    channels, one half per strand; not causal. Needs complement_map."""
    complement_map: tuple[int, ...] | None = None
    """Token id -> id of its complement (an involution over vocab_size ids), for rc_equivariant models."""

    def __post_init__(self) -> None:
        super().__post_init__()  # checks every field's type, these ones too
        self._check_complement_map()

    def _check_complement_map(self) -> None:
        if self.complement_map is None:
            if self.rc_equivariant:
                raise UserError("config: rc_equivariant needs complement_map (token id -> id of its complement)")
            return
        mapping = self.complement_map
        if len(mapping) != self.vocab_size or not all(0 <= i < len(mapping) for i in mapping):
            raise UserError(
                f"config: complement_map must list one token id in [0, vocab_size) for each of the "
                f"{self.vocab_size} ids, got {list(mapping)}"
            )
        if any(mapping[mapping[i]] != i for i in range(len(mapping))):
            raise UserError(
                f"config: complement_map must be its own inverse (the complement of a complement is "
                f"the token itself), got {list(mapping)}"
            )

    @property
    def causal(self) -> bool:
        """False for bidirectional and RC-equivariant models, which read the whole sequence."""
        return super().causal and not self.rc_equivariant


class RCPSMambaModel(MambaModel):
    """The Mamba backbone with RC-equivariant embedding, mixers and norms: hidden states (b, l, 2 * d_model),
    the second half the reverse-complement strand's reading (see `mambakit.apps.genomics.rc`). Its hooks fold
    the two strands: RC-equivariant vocabulary logits, RC-invariant pooling."""

    config: GenomicsMambaConfig

    def _make_embedding(self, config: MambaConfig, factory: dict) -> nn.Module:
        assert isinstance(config, GenomicsMambaConfig) and config.complement_map is not None
        return RCPSEmbedding(config.padded_vocab_size, config.d_model, config.complement_map, **factory)

    def _make_mixer(self, config: MambaConfig, scan_backend: str, factory: dict) -> nn.Module:
        return RCPSMixer(super()._make_mixer(config, scan_backend, factory))

    def _make_norm(self, config: MambaConfig, factory: dict) -> nn.Module:
        return RCPSNorm(super()._make_norm(config, factory))

    def vocabulary_logits(self, head: nn.Linear, features: Tensor) -> Tensor:
        assert isinstance(self.embedding, RCPSEmbedding)
        return rc_logits(head, features, self.embedding.complement)

    def fold(self, features: Tensor) -> Tensor:
        return rc_fold(features)

    def pool(self, features: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
        return rc_pool(features, attention_mask, pooling)


@register_backbone(GenomicsMambaConfig)
def genomics_backbone(
    config: GenomicsMambaConfig,
    scan_backend: str = "auto",
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> MambaModel:
    """The backbone the core heads build over a genomics config: RC-equivariant when it says so."""
    backbone = RCPSMambaModel if config.rc_equivariant else MambaModel
    return backbone(config, scan_backend, device=device, dtype=dtype)


def genomics_config(
    tokenizer: DNATokenizer,
    d_model: int = 128,
    n_layer: int = 6,
    d_state: int = 16,
    bidirectional: bool = False,
    bidirectional_strategy: str = "add",
    bidirectional_weight_tie: bool = True,
    rc_equivariant: bool = False,
) -> GenomicsMambaConfig:
    """The architecture over the tokenizer's vocabulary (default 6 layers x d_model 128, the Mamba paper's small
    DNA model); `rc_equivariant` takes the complement map from the tokenizer."""
    return GenomicsMambaConfig(
        d_model=d_model,
        n_layer=n_layer,
        d_state=d_state,
        vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bidirectional=bidirectional,
        bidirectional_strategy=bidirectional_strategy,
        bidirectional_weight_tie=bidirectional_weight_tie,
        rc_equivariant=rc_equivariant,
        complement_map=tokenizer.complement_map if rc_equivariant else None,
    )


def create_model(
    task: str,
    config: MambaConfig,
    num_labels: int = 2,
    pooling: str = "mean",
    scan_backend: str = "auto",
    labels: Sequence[str] | None = None,
) -> MambaPreTrainedModel:
    """The model `task` trains: classify -> MambaForSequenceClassification (over `labels`, when named),
    pretrain -> MambaLMHeadModel (causal configs only), mlm -> MambaForMaskedLM."""
    if task == "classify":
        return MambaForSequenceClassification(config, num_labels, pooling, scan_backend, labels=labels)
    if task == "pretrain":
        if not config.causal:
            raise UserError(
                "task pretrain trains a causal next-base model, which cannot be bidirectional or "
                "RC-equivariant (it would see the bases it predicts); use task mlm for those"
            )
        return MambaLMHeadModel(config, scan_backend)
    if task == "mlm":
        return MambaForMaskedLM(config, scan_backend)
    raise UserError(f"unknown task {task!r}; choose one of classify, pretrain, mlm")
