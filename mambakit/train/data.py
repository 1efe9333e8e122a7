"""Deterministic, resumable, rank-sharded batches from map-style or streaming datasets.

A position in the data is (epoch, examples this process consumed in the epoch). Every batch is a pure function
of (seed, epoch, rank, position), including any randomness in __getitem__ or `Task.collate` (augmentation,
masking), so a resumed run sees exactly the batches the uninterrupted run would have seen, with or without
DataLoader workers.

Processes deal the epoch's examples (one permutation, or the stream's order) round-robin and consume them in step,
so after n examples per process the run as a whole has consumed exactly the first n * world_size. That count is
what carries over to another world size (`deal_position`): the new processes deal the rest among themselves, from
`start`, the part of the count that does not divide among them.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

#: First word of the seeds of training and evaluation batches, so the two never share randomness.
TRAIN, EVAL = 0, 1


def is_streaming(data: Any) -> bool:
    """True for an IterableDataset (length unknown, read in order), False for a map-style dataset."""
    return isinstance(data, IterableDataset)


def check_dataset(data: Any, what: str) -> None:
    """Refuse, in one line, something that is neither a map-style nor an iterable dataset."""
    if not (is_streaming(data) or (hasattr(data, "__len__") and hasattr(data, "__getitem__"))):
        raise TypeError(
            f"{what} must be a map-style torch Dataset (with __len__ and __getitem__) or an "
            f"IterableDataset, got {type(data).__name__}"
        )


def epoch_order(num_examples: int, seed: int, epoch: int, rank: int, world_size: int, start: int = 0) -> list[int]:
    """This process's example indices for one epoch.

    One permutation seeded from (seed, epoch), the same on every process; process `rank` takes its positions
    start + rank, start + rank + world_size, ..., cut to (num_examples - start) // world_size so that every process
    gets as many. `start` (see `deal_position`) skips the examples a run of another world size consumed.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    permutation = torch.randperm(num_examples, generator=generator)[start:]
    per_rank = len(permutation) // world_size
    return permutation[rank::world_size][:per_rank].tolist()


def deal_position(consumed: int, world_size: int) -> tuple[int, int]:
    """(start, examples per process) that continue an epoch of which all processes together consumed `consumed`
    examples, on `world_size` processes: each process then skips `consumed // world_size` examples of its share
    dealt from `start` = consumed % world_size. Under the world size that consumed them this is the same position
    (start 0); under another one the rest is dealt anew, none repeated and none left out."""
    examples, start = divmod(consumed, world_size)
    return start, examples


def derive_seed(*words: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class BatchStream(IterableDataset):
    """The collated batches of one process for the rest of one epoch: batch_size examples each, starting after
    `skip` examples of this process's share.

    Map-style data is read in `order` (from `epoch_order`). Streams are split among processes by taking
    example rank of every consecutive group of world_size after the first `start` examples (a final partial group
    is dropped, so every process sees as many). With DataLoader workers (map-style only), worker w builds batches
    w, w + workers, ..., which the DataLoader hands back in order.
    """

    def __init__(
        self,
        data: Any,
        collate: Callable[[Sequence[Any]], dict[str, Tensor]],
        batch_size: int,
        *,
        order: list[int] | None,
        skip: int,
        drop_last: bool,
        seed_words: tuple[int, ...],
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.data, self.collate, self.batch_size = data, collate, batch_size
        self.order, self.skip, self.drop_last = order, skip, drop_last
        self.seed_words, self.rank, self.world_size, self.start = seed_words, rank, world_size, start

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for number, fetch in enumerate(self._batches()):
            if number % workers != worker:
                continue
            offset = self.skip + number * self.batch_size
            with seeded_rng(derive_seed(*self.seed_words, offset)):
                batch = self.collate(fetch())
            yield batch  # outside the block: the consumer's own RNG use must not run under the batch seed

    def _batches(self) -> Iterator[Callable[[], list[Any]]]:
        """One callable per batch that returns its examples; map-style reads happen inside it, under the batch's
        seed and only in the worker that builds the batch."""
        if self.order is not None:
            indices = iter(self.order[self.skip :])
            while chunk := list(islice(indices, self.batch_size)):
                if len(chunk) < self.batch_size and self.drop_last:
                    return
                yield lambda chunk=chunk: [self.data[index] for index in chunk]
            return
        examples = islice(self._shard(), self.skip, None)
        while chunk := list(islice(examples, self.batch_size)):
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield lambda chunk=chunk: chunk

    def _shard(self) -> Iterator[Any]:
        stream = islice(self.data, self.start, None)
        while len(group := list(islice(stream, self.world_size))) == self.world_size:
            yield group[self.rank]


def batch_loader(stream: BatchStream, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over `stream`'s ready-made batches; streams are read in the main process."""
    workers = 0 if stream.order is None else num_workers
    # A private generator: creating the loader must not draw from the global RNG, whose state is checkpointed.
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),
        worker_init_fn=leave_stop_signals_to_the_trainer,
    )


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A loader worker ignores SIGINT and SIGTERM: a signal sent to the whole process group (Ctrl-C, `timeout`, a
    scheduler's preemption) must let the trainer finish its step and save, not kill the workers under it (torch then
    fails the run with "DataLoader worker ... is killed by signal"). The workers still end with the loader."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def capture_rng(cuda: bool) -> dict[str, Any]:
    """The python, numpy, torch CPU (and current CUDA device) RNG states, as data torch.load(weights_only) reads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo to a `capture_rng` state."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with the python, numpy and torch CPU RNGs seeded with `seed`, then put them back."""
    saved = capture_rng(cuda=False)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: that would reseed CUDA too
    try:
        yield
    finally:
        restore_rng(saved)
