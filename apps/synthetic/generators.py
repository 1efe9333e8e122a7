"""Seeded batch generators of the token tasks that define what a sequence mixer can do. Each returns
(inputs, targets), two int64 tensors (batch, length) aligned per position: targets[b, t] is what the model's
output at position t must predict, IGNORE_INDEX where nothing is scored. Every draw comes from the given
`torch.Generator`, so a seed fixes a batch (fresh batches for training, a fixed one for validation).

The choices the papers leave open are written at each generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mambakit.errors import UserError
from mambakit.models import IGNORE_INDEX


def distinct_draws(batch: int, population: int, count: int, generator: torch.Generator) -> Tensor:
    """(batch, count) int64: per row, `count` distinct ids drawn uniformly from 0..population-1, in random order
    (the head of a random permutation; torch.randperm is about ten times faster than sorting random keys, which
    made the data loader the bottleneck of GPU training)."""
    return torch.stack([torch.randperm(population, generator=generator)[:count] for _ in range(batch)])


def selective_copying(
    batch: int, length: int, tokens: int, vocab: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Selective copying (Mamba paper §4.1.1; the S4 repository's `torch_copying_data(variable=True)`).

    `tokens` data tokens drawn uniformly from ids 1..vocab-2 sit at random sorted positions among noise (id 0) in
    the first length - tokens positions; then `tokens` markers (id vocab-1) follow, and at the i-th marker the
    model must output the i-th data token. Open choice: `length` counts the marker slots (4,096 in all, as
    4,096 - 2*16 noise positions in the notes' reading)."""
    if vocab < 3:
        raise UserError(f"selective copying needs vocab >= 3 (noise, marker, a data id), got {vocab}")
    if length < 2 * tokens:
        raise UserError(f"length {length} leaves no room for {tokens} data tokens and {tokens} markers")
    region = length - tokens  # noise and data
    data = torch.randint(1, vocab - 1, (batch, tokens), generator=generator)
    positions = distinct_draws(batch, region, tokens, generator).sort(dim=1).values
    inputs = torch.zeros(batch, length, dtype=torch.long)
    inputs.scatter_(1, positions, data)
    inputs[:, region:] = vocab - 1
    targets = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    targets[:, region:] = data
    return inputs, targets


def induction_heads(batch: int, length: int, vocab: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Induction heads (H3's task, as the Mamba paper §4.1.2 uses it; safari's `generate_induction_head`).

    Ids vocab-2 (the copy prefix) and vocab-1 (reserved no-op, never drawn) are special. A body of `length - 1`
    ids drawn uniformly from 0..vocab-3 holds the copy prefix once, at a position p drawn from [0, length - 3);
    the sequence ends with the copy prefix again, where the model must output the id that followed it at p + 1.
    Only that last position is scored (training on every position did not train Mamba in the issues the notes
    cite). Open choices: `vocab` counts the two specials; one trigger per sequence."""
    if vocab < 3:
        raise UserError(f"induction heads needs vocab >= 3 (two specials and a token), got {vocab}")
    if length < 4:
        raise UserError(f"induction heads needs length >= 4, got {length}")
    prefix = vocab - 2
    inputs = torch.randint(0, vocab - 2, (batch, length), generator=generator)
    trigger = torch.randint(0, length - 3, (batch,), generator=generator)
    rows = torch.arange(batch)
    inputs[rows, trigger] = prefix
    inputs[:, -1] = prefix
    targets = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    targets[:, -1] = inputs[rows, trigger + 1]
    return inputs, targets


def _power_law_gaps(batch: int, pairs: int, space: int, exponent: float, generator: torch.Generator) -> Tensor:
    """`pairs` distinct gaps per row from 0..space-1 with P(g) proportional to (g + 1)^(exponent - 1), drawn
    without replacement (Zoology's `np.random.choice(..., replace=False, p=...)`)."""
    weights = (torch.arange(space, dtype=torch.float64) + 1) ** (exponent - 1)
    return torch.multinomial(weights.expand(batch, -1), pairs, replacement=False, generator=generator)


def mqar(
    batch: int,
    length: int,
    pairs: int,
    vocab: int,
    generator: torch.Generator,
    random_non_queries: bool = False,
    power_a: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall (Zoology's `multiquery_ar`).

    `pairs` distinct keys from 1..vocab/2-1 and distinct values from vocab/2..vocab-1 are listed as k1 v1 ...
    kK vK; the rest of the sequence is a query region of zeros in which key i reappears at position 2*g_i of the
    region (distinct gaps g_i drawn with a power law that crowds them near its start), and the model must output
    v_i there. With `random_non_queries` every zero becomes a random id (the harder variant of the Mamba-2
    paper). Needs 4 * pairs <= length and vocab > length (Zoology's conditions)."""
    if 4 * pairs > length:
        raise UserError(f"MQAR needs 4 * pairs <= length, got {pairs} pairs at length {length}")
    if vocab <= length or vocab // 2 - 1 < pairs:
        raise UserError(f"MQAR needs vocab > length and vocab / 2 - 1 >= pairs, got vocab {vocab}")
    half = vocab // 2
    keys = distinct_draws(batch, half - 1, pairs, generator) + 1
    values = distinct_draws(batch, vocab - half, pairs, generator) + half
    context = torch.stack([keys, values], dim=2).reshape(batch, 2 * pairs)
    region = length - 2 * pairs
    gaps = _power_law_gaps(batch, pairs, region // 2, power_a, generator)
    queries = torch.zeros(batch, region, dtype=torch.long)
    queries.scatter_(1, 2 * gaps, keys)
    query_targets = torch.full((batch, region), IGNORE_INDEX, dtype=torch.long)
    query_targets.scatter_(1, 2 * gaps, values)
    inputs = torch.cat([context, queries], dim=1)
    targets = torch.cat([torch.full((batch, 2 * pairs), IGNORE_INDEX, dtype=torch.long), query_targets], dim=1)
    if random_non_queries:
        noise = torch.randint(0, vocab, inputs.shape, generator=generator)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, targets


#: Copying's special ids; letters are the ids after them.
COPY_PAD, COPY_BEGIN, COPY_SEPARATOR, COPY_END = 0, 1, 2, 3


def copying(batch: int, longest: int, shortest: int, vocab: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Copying (Jelassi et al. 2024, "Repeat After Me"; sjelassi/transformers_ssm_copy's `copy` task).

    Each row is `$ s | s .` then padding: a string s of n letters (n uniform in shortest..longest; letters uniform
    over ids 4..vocab-1, so vocab 30 is their 26 lowercase letters) and its copy; rows are padded to the length of
    the longest string's example, 2 * longest + 3. The model is scored on the copy and the end mark (at the
    separator it must give s[0], ..., at the copy's last letter the end), the loss only on those, as in the paper.
    Open choices: one example per row, not several packed into a fixed context; ids 0-3 are pad, $, | and ."""
    if vocab < 5:
        raise UserError(f"copying needs vocab >= 5 (four specials and a letter), got {vocab}")
    if not 1 <= shortest <= longest:
        raise UserError(f"copying needs 1 <= shortest <= longest string length, got {shortest} and {longest}")
    width = 2 * longest + 3
    inputs = torch.full((batch, width), COPY_PAD, dtype=torch.long)
    targets = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    sizes = torch.randint(shortest, longest + 1, (batch,), generator=generator).tolist()
    for row, size in enumerate(sizes):
        letters = torch.randint(COPY_END + 1, vocab, (size,), generator=generator)
        inputs[row, : 2 * size + 3] = torch.cat(
            [
                torch.tensor([COPY_BEGIN]),
                letters,
                torch.tensor([COPY_SEPARATOR]),
                letters,
                torch.tensor([COPY_END]),
            ]
        )
        targets[row, size + 1 : 2 * size + 2] = inputs[row, size + 2 : 2 * size + 3]
    return inputs, targets
