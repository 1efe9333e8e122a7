"""Task heads over one backbone: causal and masked language modelling, sequence and token classification.

Every model has `forward_features` (backbone hidden states) and `forward_head` (features -> logits), a
`head_config()` that checkpoints store, and `allocate_state` for recurrent use. Over an RC-equivariant backbone
(2 * d_model channels, see mambakit.nn.rc) the heads fold the two strands: RC-equivariant vocabulary logits,
RC-invariant pooled classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import POOLINGS, pool_sequence, rc_fold, rc_logits, rc_pool
from .backbone import MambaModel, MambaState
from .config import MambaConfig

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """What every head returns: logits, and the loss when labels were given."""

    logits: Tensor
    loss: Tensor | None = None


class MambaPreTrainedModel(nn.Module):
    """Shared base: a MambaModel backbone named `backbone`, the state API, and the head-config contract."""

    architecture: str = ""

    def __init__(self, config: MambaConfig, scan_backend: str = "auto", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaModel(config, scan_backend, device=device, dtype=dtype)

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments of the head beyond the MambaConfig (saved in config.json)."""
        return {}

    def allocate_state(self, batch: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None) -> MambaState:
        """Zero recurrent state for `batch` sequences."""
        return self.backbone.allocate_state(batch, device, dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory: recompute each block in the backward."""
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                         state: MambaState | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """Backbone hidden states (b, l, d_model), (b, l, 2 * d_model) for an RC-equivariant backbone.
        attention_mask (b, l): right padding, needed by non-causal backbones when the batch is padded."""
        return self.backbone(input_ids, inputs_embeds, state, attention_mask)


class MambaLMHeadModel(MambaPreTrainedModel):
    """Causal language model: backbone + (tied) linear head over the vocabulary."""

    architecture = "MambaLMHeadModel"

    def __init__(self, config: MambaConfig, scan_backend: str = "auto", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if config.vocab_size < 1:
            raise ValueError("a language model needs vocab_size >= 1")
        if not config.causal and type(self) is MambaLMHeadModel:
            raise ValueError("a causal language model needs a causal backbone: bidirectional and RC-equivariant "
                             "models would see the tokens they predict; use MambaForMaskedLM")
        super().__init__(config, scan_backend, device, dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward_head(self, features: Tensor) -> Tensor:
        """(…, d_model) -> logits (…, vocab_size); padded vocabulary rows are dropped."""
        if self.config.rc_equivariant:
            return rc_logits(self.lm_head, features, self.backbone.embedding.complement)[..., : self.config.vocab_size]
        return self.lm_head(features)[..., : self.config.vocab_size]

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None,
                inputs_embeds: Tensor | None = None, state: MambaState | None = None) -> ModelOutput:
        """input_ids (b, l) -> logits (b, l, vocab_size). `labels` (b, l), usually input_ids, are shifted inside:
        position t predicts labels[t+1]; IGNORE_INDEX (-100) positions are skipped."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, state))
        loss = None
        if labels is not None:
            # Shifting the labels rather than slicing the logits spares a copy of the largest tensor of the step.
            next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), next_labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return ModelOutput(logits, loss)

    def step(self, input_ids: Tensor, state: MambaState) -> Tensor:
        """One token per sequence: input_ids (b,) -> next-token logits (b, vocab_size); `state` updated."""
        return self.forward_head(self.backbone.step(input_ids, state=state))


class MambaForMaskedLM(MambaLMHeadModel):
    """Masked language model (BERT-style, for bidirectional and RC-equivariant backbones): the same head as the
    causal LM, but position t predicts labels[t] itself, unshifted."""

    architecture = "MambaForMaskedLM"

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, inputs_embeds: Tensor | None = None) -> ModelOutput:
        """input_ids (b, l) -> logits (b, l, vocab_size). `labels` (b, l) hold the original token at masked
        positions and IGNORE_INDEX (-100) elsewhere."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, attention_mask=attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return ModelOutput(logits, loss)


class MambaForSequenceClassification(MambaPreTrainedModel):
    """Backbone, padding-aware pooling, linear classifier. num_labels == 1 makes it a regressor (MSE)."""

    architecture = "MambaForSequenceClassification"

    def __init__(self, config: MambaConfig, num_labels: int = 2, pooling: str = "mean", scan_backend: str = "auto",
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        super().__init__(config, scan_backend, device, dtype)
        self.num_labels, self.pooling = num_labels, pooling
        self.classifier = nn.Linear(config.d_model, num_labels, device=device, dtype=dtype)

    def head_config(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "pooling": self.pooling}

    def forward_head(self, features: Tensor, attention_mask: Tensor | None = None,
                     pre_logits: bool = False) -> Tensor:
        """features (b, l, d_model) -> logits (b, num_labels), or the pooled (b, d_model) when pre_logits."""
        if self.config.rc_equivariant:
            pooled = rc_pool(features, attention_mask, self.pooling)
        else:
            pooled = pool_sequence(features, attention_mask, self.pooling)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, inputs_embeds: Tensor | None = None) -> ModelOutput:
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


class MambaForTokenClassification(MambaPreTrainedModel):
    """One label per position (e.g. per-base annotation)."""

    architecture = "MambaForTokenClassification"

    def __init__(self, config: MambaConfig, num_labels: int = 2, scan_backend: str = "auto",
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        super().__init__(config, scan_backend, device, dtype)
        self.num_labels = num_labels
        self.classifier = nn.Linear(config.d_model, num_labels, device=device, dtype=dtype)

    def head_config(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels}

    def forward_head(self, features: Tensor) -> Tensor:
        """(b, l, d_model) -> logits (b, l, num_labels)."""
        return self.classifier(rc_fold(features) if self.config.rc_equivariant else features)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, inputs_embeds: Tensor | None = None) -> ModelOutput:
        """labels (b, l); positions with IGNORE_INDEX or attention_mask 0 do not count in the loss."""
        logits = self.forward_head(self.forward_features(input_ids, inputs_embeds, attention_mask=attention_mask))
        loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = labels.masked_fill(~attention_mask.to(torch.bool), IGNORE_INDEX)
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return ModelOutput(logits, loss)


#: architecture name -> model class; checkpoints name their class here.
ARCHITECTURES: dict[str, type[MambaPreTrainedModel]] = {
    cls.architecture: cls
    for cls in (MambaLMHeadModel, MambaForMaskedLM, MambaForSequenceClassification, MambaForTokenClassification)
}
