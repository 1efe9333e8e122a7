"""The capability tasks as datasets: every example is generated from (seed, index), so the training set is a large
virtual set of fresh sequences, the validation set a fixed one that shares no example seed with it, and a run
repeats exactly from its seed.

torch's CPU generator takes 32-bit seeds, so (seed, index) is hashed into 31 bits, the 32nd telling validation
from training: within an epoch of 2^20 training examples about 250 pairs of them share a seed (one example in
4,000 seen twice), and no validation example is ever a training one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import generators

#: Examples in one epoch of the virtual training set.
TRAIN_EXAMPLES = 1 << 20
#: Fixed validation examples.
VALIDATION_EXAMPLES = 512
_MASK64 = (1 << 64) - 1


def example_seed(seed: int, index: int, validation: bool) -> int:
    """The 32-bit generator seed of example `index` of a run seeded `seed` (splitmix64 of both, 31 bits kept; the
    top bit set for validation examples)."""
    z = ((seed & 0xFFFFFFFF) << 32 | (index & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15 & _MASK64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    z ^= z >> 31
    return (z & 0x7FFFFFFF) | (0x80000000 if validation else 0)


@dataclass(frozen=True)
class TaskShape:
    """A task's sizes: sequence length (copying: the longest string), vocabulary, and its count (data tokens to
    copy, key-value pairs; copying: the shortest string)."""

    length: int
    vocab: int
    count: int


Generate = Callable[[TaskShape, torch.Generator], tuple[Tensor, Tensor]]


class TokenTask(NamedTuple):
    """One token task: an example's generator, its CPU-smoke sizes (../shared/notes/capabilities.md), the
    positions of one example at a shape, and whether evaluating at a length fixes the count to it too."""

    generate: Generate
    defaults: TaskShape
    positions: Callable[[TaskShape], int] = lambda shape: shape.length
    count_follows_length: bool = False


TASKS: dict[str, TokenTask] = {
    "selective-copying": TokenTask(
        lambda s, g: generators.selective_copying(1, s.length, s.count, s.vocab, g),
        TaskShape(length=64, vocab=8, count=4),
    ),
    "induction-heads": TokenTask(
        lambda s, g: generators.induction_heads(1, s.length, s.vocab, g),
        TaskShape(length=64, vocab=16, count=1),
    ),
    "mqar": TokenTask(
        lambda s, g: generators.mqar(1, s.length, s.count, s.vocab, g),
        TaskShape(length=64, vocab=256, count=8),
    ),
    "mqar-hard": TokenTask(
        lambda s, g: generators.mqar(1, s.length, s.count, s.vocab, g, random_non_queries=True),
        TaskShape(length=64, vocab=256, count=8),
    ),
    # length: the longest string, count: the shortest; vocab counts the 4 specials (8 letters here). An example
    # is `$ s | s .` for the longest string; evaluated at a length, every string has that length.
    "copying": TokenTask(
        lambda s, g: generators.copying(1, s.length, s.count, s.vocab, g),
        TaskShape(length=10, vocab=12, count=2),
        positions=lambda shape: 2 * shape.length + 3,
        count_follows_length=True,
    ),
}


class SeededExamples(Dataset):
    """A virtual dataset of `size` examples of a generated task; example i comes from a generator seeded with
    `example_seed(seed, i, validation)`. Subclasses say how one example is made (`example`)."""

    def __init__(self, shape: Any, seed: int, size: int, validation: bool = False) -> None:
        self.shape, self.seed, self.size, self.validation = shape, seed, size, validation
        # Fail now, in one line, on sizes the task cannot have (not at the first batch).
        self.example(torch.Generator().manual_seed(0))

    def example(self, generator: torch.Generator) -> dict[str, Tensor]:
        """One example drawn from `generator`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.example(torch.Generator().manual_seed(example_seed(self.seed, index, self.validation)))


class SyntheticTask(SeededExamples):
    """Examples {"input_ids": (length,), "targets": (length,)} of one token task."""

    def __init__(self, task: str, shape: TaskShape, seed: int, size: int, validation: bool = False) -> None:
        self.task = task  # the name, not its generator: loader workers that spawn must pickle the dataset
        super().__init__(shape, seed, size, validation)

    def example(self, generator: torch.Generator) -> dict[str, Tensor]:
        inputs, targets = TASKS[self.task].generate(self.shape, generator)
        return {"input_ids": inputs[0], "targets": targets[0]}
