"""Task heads over one backbone: causal and masked language modelling, sequence and token classification.

Every model meets `mambakit.models.protocol.TrainableModel` and has `forward_features` (backbone hidden states)
and `forward_head` (features -> logits), and `allocate_state` for recurrent use. The backbone is the one
registered for the config's class (`register_backbone`); the heads reach its features only through its
`vocabulary_logits`, `fold` and `pool` hooks, so a backbone whose hidden states are laid out differently (the
genomics app's reverse-complement-equivariant one) keeps every head as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..nn import POOLINGS, ResidualBlock, no_weight_decay_names
from .backbone import MambaModel, MambaState
from .config import MambaConfig
from .registry import backbone_factory, register_architecture, register_backbone

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """What every head returns: logits, and the loss when labels were given."""

    logits: Tensor
    loss: Tensor | None = None


register_backbone(MambaConfig)(MambaModel)


class MambaPreTrainedModel(nn.Module):
    """Shared base: the backbone registered for the config's class, named `backbone`; the state API; and the
    rest of the `TrainableModel` contract."""

    architecture: ClassVar[str] = ""
    backbone: MambaModel

    def __init__(
        self,
        config: MambaConfig,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone_factory(config)(config, scan_backend=scan_backend, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: MambaConfig, head: Mapping[str, Any], **options: Any) -> MambaPreTrainedModel:
        """The model over `config` with the head arguments `head`; options: scan_backend, device, dtype."""
        return cls(config, **head, **options)

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments of the head beyond the MambaConfig (saved in config.json)."""
        return {}

    def shard_units(self) -> list[nn.Module]:
        """The residual blocks, which FSDP shards one by one."""
        return [module for module in self.modules() if isinstance(module, ResidualBlock)]

    def no_weight_decay(self) -> set[str]:
        """The SSM parameters (A_log, D, the dt bias of LTI layers): `mambakit.nn.no_weight_decay_names`."""
        return no_weight_decay_names(self)

    def allocate_state(
        self,
        batch: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> MambaState:
        """Zero recurrent state for `batch` sequences (`max_length`: see `MambaModel.allocate_state`)."""
        return self.backbone.allocate_state(batch, device, dtype, max_length)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory: recompute each block in the backward."""
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        state: MambaState | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Backbone hidden states (b, l, d_model), (b, l, 2 * d_model) for an RC-equivariant backbone.
        attention_mask (b, l): right padding, needed by non-causal backbones when the batch is padded."""
        return self.backbone(input_ids, inputs_embeds, state, attention_mask)


class _VocabularyHeadModel(MambaPreTrainedModel):
    """A backbone and a (tied) linear head over the vocabulary: what the causal and the masked LM share."""

    def __init__(
        self,
        config: MambaConfig,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if config.vocab_size < 1:
            raise UserError("a language model needs vocab_size >= 1")
        super().__init__(config, scan_backend, device, dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            assert isinstance(self.backbone.embedding, nn.Embedding)  # vocab_size >= 1 gives one
            self.lm_head.weight = self.backbone.embedding.weight

    def forward_head(self, features: Tensor) -> Tensor:
        """Backbone features (…) -> logits (…, vocab_size); padded vocabulary rows are dropped."""
        return self.backbone.vocabulary_logits(self.lm_head, features)[..., : self.config.vocab_size]


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of position t predicting labels[t + 1] (logits (b, l, v), labels (b, l), usually the
    input ids); IGNORE_INDEX positions and the last position are skipped."""
    # Shifting the labels rather than slicing the logits spares a copy of the largest tensor of the step.
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), next_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@register_architecture()
class MambaLMHeadModel(_VocabularyHeadModel):
    """Causal language model: backbone + (tied) linear head over the vocabulary."""

    def __init__(
        self,
        config: MambaConfig,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not config.causal:
            raise UserError(
                "a causal language model needs a causal backbone: bidirectional and RC-equivariant "
                "models would see the tokens they predict; use MambaForMaskedLM"
            )
        super().__init__(config, scan_backend, device, dtype)

    def forward(
        self,
        input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        state: MambaState | None = None,
    ) -> ModelOutput:
        """input_ids (b, l) -> logits (b, l, vocab_size). `labels` (b, l), usually input_ids, are shifted inside:
        position t predicts labels[t+1]; IGNORE_INDEX (-100) positions are skipped."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, state))
        return ModelOutput(logits, None if labels is None else next_token_loss(logits, labels))

    def step(self, input_ids: Tensor, state: MambaState) -> Tensor:
        """One token per sequence: input_ids (b,) -> next-token logits (b, vocab_size); `state` updated."""
        return self.forward_head(self.backbone.step(input_ids, state=state))


@register_architecture()
class MambaForMaskedLM(_VocabularyHeadModel):
    """Masked language model (BERT-style, for bidirectional and RC-equivariant backbones): the same head as the
    causal LM, but position t predicts labels[t] itself, unshifted."""

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> ModelOutput:
        """input_ids (b, l) -> logits (b, l, vocab_size). `labels` (b, l) hold the original token at masked
        positions and IGNORE_INDEX (-100) elsewhere."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, attention_mask=attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return ModelOutput(logits, loss)


def _check_labels(num_labels: int, labels: Sequence[str] | None) -> tuple[str, ...] | None:
    if num_labels < 1:
        raise UserError(f"num_labels must be >= 1, got {num_labels}")
    if labels is None:
        return None
    labels = tuple(labels)
    if len(labels) != num_labels or not all(isinstance(label, str) for label in labels):
        raise UserError(f"labels must name each of the {num_labels} classes, got {list(labels)}")
    return labels


class _ClassifierModel(MambaPreTrainedModel):
    """A backbone and a linear classifier over `num_labels` classes, optionally named (as transformers'
    id2label): label names are part of the head config, so a checkpoint says what its classes are."""

    def __init__(
        self,
        config: MambaConfig,
        num_labels: int = 2,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        labels: Sequence[str] | None = None,
    ) -> None:
        checked = _check_labels(num_labels, labels)
        super().__init__(config, scan_backend, device, dtype)
        self.num_labels, self.labels = num_labels, checked
        self.classifier = nn.Linear(config.d_model, num_labels, device=device, dtype=dtype)

    def head_config(self) -> dict[str, Any]:
        head: dict[str, Any] = {"num_labels": self.num_labels}
        if self.labels is not None:
            head["labels"] = list(self.labels)
        return head


@register_architecture()
class MambaForSequenceClassification(_ClassifierModel):
    """Backbone, padding-aware pooling, linear classifier. num_labels == 1 makes it a regressor (MSE)."""

    def __init__(
        self,
        config: MambaConfig,
        num_labels: int = 2,
        pooling: str = "mean",
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        labels: Sequence[str] | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        super().__init__(config, num_labels, scan_backend, device, dtype, labels=labels)
        self.pooling = pooling

    def head_config(self) -> dict[str, Any]:
        return {**super().head_config(), "pooling": self.pooling}

    def forward_head(self, features: Tensor, attention_mask: Tensor | None = None, pre_logits: bool = False) -> Tensor:
        """Backbone features (b, l, …) -> logits (b, num_labels), or the pooled (b, d_model) when pre_logits."""
        pooled = self.backbone.pool(features, attention_mask, self.pooling)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> ModelOutput:
        """input_ids (b, l) with attention_mask (b, l) (1 = real token, right padding) -> logits (b, num_labels)."""
        features = self.forward_features(input_ids, inputs_embeds, attention_mask=attention_mask)
        logits = self.forward_head(features, attention_mask)
        loss = None
        if labels is not None:
            loss = (
                F.mse_loss(logits.squeeze(-1).float(), labels.float())
                if self.num_labels == 1
                else F.cross_entropy(logits.float(), labels)
            )
        return ModelOutput(logits, loss)


@register_architecture()
class MambaForTokenClassification(_ClassifierModel):
    """One label per position (e.g. per-base annotation)."""

    def forward_head(self, features: Tensor) -> Tensor:
        """Backbone features (b, l, …) -> logits (b, l, num_labels)."""
        return self.classifier(self.backbone.fold(features))

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> ModelOutput:
        """labels (b, l); positions with IGNORE_INDEX or attention_mask 0 do not count in the loss."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, attention_mask=attention_mask))
        loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = labels.masked_fill(~attention_mask.to(torch.bool), IGNORE_INDEX)
            loss = F.cross_entropy(
                logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return ModelOutput(logits, loss)


@register_architecture()
class MambaForVectorSequences(MambaPreTrainedModel):
    """Vectors in, vectors out, one per position: a linear read-in (in_features -> d_model), the causal backbone,
    a linear read-out (d_model -> out_features). The model of in-context regression studies (Garg et al.; Park et
    al.'s MambaFormer code), whose prompts are sequences of real vectors; also any real-valued sequence task."""

    def __init__(
        self,
        config: MambaConfig,
        in_features: int,
        out_features: int = 1,
        scan_backend: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if config.vocab_size != 0:
            raise UserError("a vector-sequence model reads vectors, not tokens: set vocab_size 0")
        if not config.causal:
            raise UserError("a vector-sequence model needs a causal backbone")
        if in_features < 1 or out_features < 1:
            raise UserError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        super().__init__(config, scan_backend, device, dtype)
        self.in_features, self.out_features = in_features, out_features
        self.read_in = nn.Linear(in_features, config.d_model, device=device, dtype=dtype)
        self.read_out = nn.Linear(config.d_model, out_features, device=device, dtype=dtype)

    def head_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    def forward_head(self, features: Tensor) -> Tensor:
        """Backbone features (…, d_model) -> outputs (…, out_features)."""
        return self.read_out(features)

    def forward(
        self, input_vectors: Tensor, labels: Tensor | None = None, state: MambaState | None = None
    ) -> ModelOutput:
        """input_vectors (b, l, in_features) -> outputs (b, l, out_features) in `logits`; with `labels` of the same
        shape, the loss is their mean squared error (positions whose labels are NaN do not count)."""
        outputs = self.forward_head(self.forward_features(inputs_embeds=self.read_in(input_vectors), state=state))
        loss = None
        if labels is not None:
            scored = ~labels.isnan()
            loss = F.mse_loss(outputs.float()[scored], labels.float()[scored])
        return ModelOutput(outputs, loss)

    def step(self, input_vectors: Tensor, state: MambaState) -> Tensor:
        """One position: input_vectors (b, in_features) -> outputs (b, out_features); `state` updated."""
        return self.forward_head(self.backbone.step(inputs_embeds=self.read_in(input_vectors), state=state))
