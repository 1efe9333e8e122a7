"""Genomics models: a MambaConfig for the DNA vocabulary, and the head each task trains.

    causal Mamba            the default; the only kind a causal LM (task "pretrain") can use
    bidirectional=True      BiMamba (Caduceus): a forward and a flipped pass per layer, combined by "add" or
                            "ew_multiply", in/out projections tied or not
    rc_equivariant=True     Caduceus-PS: parameter sharing across the two strands, so the model's output on a
                            reverse complement is the RC of its output (classification: the same logits)
"""

from __future__ import annotations

from mambakit.models import (
    MambaConfig,
    MambaForMaskedLM,
    MambaForSequenceClassification,
    MambaLMHeadModel,
    MambaPreTrainedModel,
)

from .tokenizer import DNATokenizer

TASKS = ("classify", "pretrain", "mlm")


def genomics_config(tokenizer: DNATokenizer, d_model: int = 128, n_layer: int = 6, d_state: int = 16,
                    bidirectional: bool = False, bidirectional_strategy: str = "add",
                    bidirectional_weight_tie: bool = True, rc_equivariant: bool = False) -> MambaConfig:
    """The architecture over the tokenizer's vocabulary (default 6 layers x d_model 128, the Mamba paper's small
    DNA model); `rc_equivariant` takes the complement map from the tokenizer."""
    return MambaConfig(
        d_model=d_model, n_layer=n_layer, d_state=d_state, vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_token_id, bidirectional=bidirectional,
        bidirectional_strategy=bidirectional_strategy, bidirectional_weight_tie=bidirectional_weight_tie,
        rc_equivariant=rc_equivariant, complement_map=tokenizer.complement_map if rc_equivariant else None,
    )


def create_model(task: str, config: MambaConfig, num_labels: int = 2, pooling: str = "mean",
                 scan_backend: str = "auto") -> MambaPreTrainedModel:
    """The model `task` trains: classify -> MambaForSequenceClassification, pretrain -> MambaLMHeadModel (causal
    configs only), mlm -> MambaForMaskedLM."""
    if task == "classify":
        return MambaForSequenceClassification(config, num_labels, pooling, scan_backend)
    if task == "pretrain":
        if not config.causal:
            raise ValueError("task pretrain trains a causal next-base model, which cannot be bidirectional or "
                             "RC-equivariant (it would see the bases it predicts); use task mlm for those")
        return MambaLMHeadModel(config, scan_backend)
    if task == "mlm":
        return MambaForMaskedLM(config, scan_backend)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
