"""A third party's domain app, as tests/test_third_party.py installs it: a toy architecture that is not a Mamba
model at all (a bag-of-tokens MLP), its own config type, and a domain with one task, all registered through the
public API and found through the `mambakit.apps` entry point of this folder's dist-info."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import typer
from torch import Tensor, nn

from mambakit.domains import Domain, DomainTask, Splits, TaskInputs
from mambakit.models import ModelOutput, register_architecture, register_config
from mambakit.train.classification import ClassificationTask

VOCAB = 16
#: The class of a sequence: whether it holds this token.
MARKER = 3


@register_config("toy-bag", domain="toy")
@dataclass(frozen=True)
class ToyConfig:
    """Width and vocabulary of the toy model."""

    width: int = 8
    vocab_size: int = VOCAB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown toy config keys {sorted(unknown)}")
        return cls(**data)


@register_architecture(domain="toy")
class ToyBagClassifier(nn.Module):
    """Mean of token embeddings -> MLP -> class logits."""

    def __init__(self, config: ToyConfig, num_labels: int = 2) -> None:
        super().__init__()
        self.config, self.num_labels = config, num_labels
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.hidden = nn.Linear(config.width, config.width)
        self.classifier = nn.Linear(config.width, num_labels)

    @classmethod
    def from_config(cls, config: ToyConfig, head: Mapping[str, Any], **options: Any) -> ToyBagClassifier:
        return cls(config, **head).to(device=options.get("device"), dtype=options.get("dtype"))

    def head_config(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels}

    def shard_units(self) -> list[nn.Module]:
        return [self.hidden]

    def no_weight_decay(self) -> set[str]:
        return {"embedding.weight"}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> ModelOutput:
        mask = attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(torch.relu(self.hidden(pooled)))
        return ModelOutput(logits, None if labels is None else F.cross_entropy(logits.float(), labels))


@dataclass(frozen=True)
class ToyOptions:
    """The toy domain's own option."""

    examples: Annotated[int, typer.Option("--examples", min=8, help="Synthetic sequences to make.")] = 96


def toy_examples(count: int, seed: int) -> list[dict[str, Tensor]]:
    """Random sequences of 4 to 11 tokens, labelled 1 when MARKER occurs in them."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        length = int(torch.randint(4, 12, (), generator=generator))
        ids = torch.randint(0, VOCAB, (length,), generator=generator)
        examples.append({"input_ids": ids, "labels": torch.tensor(int((ids == MARKER).any()))})
    return examples


def _data(inputs: TaskInputs) -> Splits:
    examples = toy_examples(inputs.options.examples, inputs.run.seed)
    cut = len(examples) * 3 // 4
    return Splits(examples[:cut], examples[cut:], labels=("absent", "present"))


DOMAIN = Domain(
    name="toy",
    help="a third party's toy domain",
    tasks=[
        DomainTask(
            "marker",
            "does the sequence hold the marker token",
            data=_data,
            model=lambda inputs, splits: ToyBagClassifier(ToyConfig()),
            task=lambda inputs: ClassificationTask(pad_token_id=0),
            defaults={"max_steps": 6, "batch_size": 8, "lr": 1e-2, "eval_every": 3, "save_every": 3},
        )
    ],
    options=ToyOptions,
)
