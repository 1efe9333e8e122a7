"""Inference over a `SequenceDataset`: class logits, sequence embeddings, and writing embeddings to .npy or
.parquet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mambakit.errors import UserError
from mambakit.models import MambaForSequenceClassification, MambaPreTrainedModel
from mambakit.nn import pool_sequence

from .datasets import SequenceDataset
from .tasks import conjoined, pad_batch

EMBEDDING_FORMATS = (".npy", ".parquet")


def _batches(model: MambaPreTrainedModel, dataset: SequenceDataset, batch_size: int) -> Iterator[dict[str, Tensor]]:
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = pad_batch(examples, dataset.tokenizer.pad_token_id)
        yield {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


@torch.no_grad()
def predict_logits(
    model: MambaForSequenceClassification, dataset: SequenceDataset, batch_size: int = 64, conjoin: bool = False
) -> np.ndarray:
    """Class logits (n, num_labels) of every sequence, in dataset order; `conjoin` averages each sequence's
    logits with its reverse complement's."""
    model.eval()
    tokenizer = dataset.tokenizer if conjoin else None
    outputs = [
        conjoined(lambda ids, mask: model(ids, attention_mask=mask).logits, batch, tokenizer).float().cpu()
        for batch in _batches(model, dataset, batch_size)
    ]
    return torch.cat(outputs).numpy()


@torch.no_grad()
def embed(
    model: MambaPreTrainedModel,
    dataset: SequenceDataset,
    batch_size: int = 64,
    pooling: str = "mean",
    conjoin: bool = False,
) -> np.ndarray:
    """One vector per sequence (n, d_model), in dataset order: a classifier's pooled features (its own pooling),
    else the backbone's hidden states, folded to d_model per base (an RC-equivariant backbone averages its two
    strands' readings), pooled over the real bases (`pooling`). `conjoin` averages with the reverse
    complement's vector."""
    model.eval()

    def vectors(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        features = model.forward_features(input_ids, attention_mask=attention_mask)
        if isinstance(model, MambaForSequenceClassification):
            return model.forward_head(features, attention_mask, pre_logits=True)
        return pool_sequence(model.backbone.fold(features), attention_mask, pooling)

    tokenizer = dataset.tokenizer if conjoin else None
    outputs = [conjoined(vectors, batch, tokenizer).float().cpu() for batch in _batches(model, dataset, batch_size)]
    return torch.cat(outputs).numpy()


def save_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str]) -> Path:
    """Write embeddings (n, d): .npy holds the float32 matrix alone (rows in input order); .parquet has a
    `name` column and one float32 column per dimension (`e0`, `e1`, ...), and needs pyarrow."""
    path = Path(path)
    if path.suffix not in EMBEDDING_FORMATS:
        raise UserError(
            f"{path}: embeddings are written as {' or '.join(EMBEDDING_FORMATS)}; give one of those endings"
        )
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(names) != len(embeddings):
        raise UserError(f"{len(names)} names for {len(embeddings)} embeddings")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, embeddings)
        return path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(f"{path}: writing parquet needs pyarrow (pip install pyarrow); or write .npy") from error
    columns = {"name": pa.array(list(names), pa.string())}
    columns.update({f"e{i}": pa.array(embeddings[:, i]) for i in range(embeddings.shape[1])})
    pq.write_table(pa.table(columns), path)
    return path
