"""Inference over a `SequenceDataset`: class logits, sequence embeddings, and writing embeddings to .npy or
.parquet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mambakit.domains import Requirement
from mambakit.errors import UserError
from mambakit.models import MambaForSequenceClassification, MambaPreTrainedModel
from mambakit.nn import pool_sequence
from mambakit.predictions import check_output_file

from .datasets import SequenceDataset
from .readers import SequenceRecord
from .tasks import conjoined, pad_batch

EMBEDDING_FORMATS = (".npy", ".parquet")
#: pyarrow, for `predict --embed --out FILE.parquet` (.npy needs nothing).
PARQUET = Requirement("pyarrow.parquet", "pyarrow", "genomics", needed_for="Parquet embeddings (--out X.parquet)")


#: Bases per sequence, and padded bases per batch, that `predict` takes unless --max-length raises it: the model's
#: activations grow with both, so a chromosome given whole must not be run in one piece by accident.
MAX_PREDICT_LENGTH = 2**20


def check_lengths(records: Sequence[SequenceRecord], max_length: int, kept: int | None = None) -> None:
    """A one-line error naming the first record longer than `max_length` bases (after keeping its first `kept`
    bases, when given), and how to proceed."""
    for record in records:
        length = len(record.sequence) if kept is None else min(kept, len(record.sequence))
        if length > max_length:
            raise UserError(
                f"{record.source}: {length:,} bases, more than --max-length {max_length:,} (memory grows with the "
                f"length); cut it into windows (e.g. BED intervals over it with --genome) or raise --max-length"
            )


def _batches(
    model: MambaPreTrainedModel, dataset: SequenceDataset, batch_size: int, max_tokens: int
) -> Iterator[dict[str, Tensor]]:
    """Consecutive items, padded, in batches of at most `batch_size` sequences and `max_tokens` padded bases (a
    longer sequence forms a batch of its own)."""
    device = next(model.parameters()).device
    batch: list[dict[str, Tensor]] = []
    longest = 0
    for index in range(len(dataset)):
        item = dataset[index]
        length = max(longest, len(item["input_ids"]))
        if batch and (len(batch) == batch_size or (len(batch) + 1) * length > max_tokens):
            yield _padded(batch, dataset, device)
            batch, length = [], len(item["input_ids"])
        batch.append(item)
        longest = length
    if batch:
        yield _padded(batch, dataset, device)


def _padded(examples: list[dict[str, Tensor]], dataset: SequenceDataset, device: torch.device) -> dict[str, Tensor]:
    batch = pad_batch(examples, dataset.tokenizer.pad_token_id)
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


@torch.no_grad()
def predict_logits(
    model: MambaForSequenceClassification,
    dataset: SequenceDataset,
    batch_size: int = 64,
    conjoin: bool = False,
    max_tokens: int = MAX_PREDICT_LENGTH,
) -> np.ndarray:
    """Class logits (n, num_labels) of every sequence, in dataset order; `conjoin` averages each sequence's
    logits with its reverse complement's. A batch holds at most `batch_size` sequences and `max_tokens` padded
    bases."""
    model.eval()
    tokenizer = dataset.tokenizer if conjoin else None
    outputs = [
        conjoined(lambda ids, mask: model(ids, attention_mask=mask).logits, batch, tokenizer).float().cpu()
        for batch in _batches(model, dataset, batch_size, max_tokens)
    ]
    return torch.cat(outputs).numpy()


@torch.no_grad()
def embed(
    model: MambaPreTrainedModel,
    dataset: SequenceDataset,
    batch_size: int = 64,
    pooling: str = "mean",
    conjoin: bool = False,
    max_tokens: int = MAX_PREDICT_LENGTH,
) -> np.ndarray:
    """One vector per sequence (n, d_model), in dataset order: a classifier's pooled features (its own pooling),
    else the backbone's hidden states, folded to d_model per base (an RC-equivariant backbone averages its two
    strands' readings), pooled over the real bases (`pooling`). `conjoin` averages with the reverse
    complement's vector. Batches as `predict_logits`'s."""
    model.eval()

    def vectors(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        features = model.forward_features(input_ids, attention_mask=attention_mask)
        if isinstance(model, MambaForSequenceClassification):
            return model.forward_head(features, attention_mask, pre_logits=True)
        return pool_sequence(model.backbone.fold(features), attention_mask, pooling)

    tokenizer = dataset.tokenizer if conjoin else None
    outputs = [
        conjoined(vectors, batch, tokenizer).float().cpu() for batch in _batches(model, dataset, batch_size, max_tokens)
    ]
    return torch.cat(outputs).numpy()


def check_embeddings_path(path: Path) -> None:
    """A one-line error, before any work, for a path `save_embeddings` cannot write: an ending other than .npy or
    .parquet, a folder, or .parquet without pyarrow."""
    if path.suffix not in EMBEDDING_FORMATS:
        raise UserError(
            f"{path}: embeddings are written as {' or '.join(EMBEDDING_FORMATS)}; give one of those endings"
        )
    check_output_file(path, "embeddings", "embeddings.npy")
    if path.suffix == ".parquet":
        PARQUET.load(f"--out {path}: writing Parquet")


def save_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str]) -> Path:
    """Write embeddings (n, d): .npy holds the float32 matrix alone (rows in input order); .parquet has a
    `name` column and one float32 column per dimension (`e0`, `e1`, ...), and needs pyarrow."""
    path = Path(path)
    check_embeddings_path(path)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(names) != len(embeddings):
        raise UserError(f"{len(names)} names for {len(embeddings)} embeddings")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, embeddings)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"name": pa.array(list(names), pa.string())}
    columns.update({f"e{i}": pa.array(embeddings[:, i]) for i in range(embeddings.shape[1])})
    pq.write_table(pa.table(columns), path)
    return path
