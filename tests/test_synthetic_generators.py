"""The capability tasks' generators: shapes, what is scored, and the invariants that make each task what the
papers define (the copied tokens in order, the induction answer after the trigger, MQAR's distinct keys and
power-law query positions), seeded."""

from __future__ import annotations

import pytest
import torch
from mambakit.apps.synthetic.generators import copying, induction_heads, mqar, selective_copying

from mambakit.models import IGNORE_INDEX


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_selective_copying_scores_the_data_tokens_in_order_at_the_markers():
    inputs, targets = selective_copying(64, 40, 6, 10, _generator())
    assert inputs.shape == targets.shape == (64, 40) and inputs.dtype == torch.long
    assert (inputs[:, 34:] == 9).all() and not (inputs[:, :34] == 9).any()
    assert (targets[:, :34] == IGNORE_INDEX).all()
    for row in range(64):
        data = inputs[row, :34][inputs[row, :34] != 0]
        assert data.tolist() == targets[row, 34:].tolist()  # in the order they appeared
    assert targets[:, 34:].min() >= 1 and targets[:, 34:].max() <= 8
    again, _ = selective_copying(64, 40, 6, 10, _generator())
    assert torch.equal(inputs, again) and not torch.equal(inputs, selective_copying(64, 40, 6, 10, _generator(1))[0])
    with pytest.raises(ValueError, match="no room"):
        selective_copying(1, 10, 6, 10, _generator())


def test_induction_answer_is_the_token_after_the_only_earlier_trigger():
    inputs, targets = induction_heads(128, 30, 16, _generator())
    assert inputs.shape == (128, 30) and (inputs[:, -1] == 14).all() and not (inputs == 15).any()
    assert (targets[:, :-1] == IGNORE_INDEX).all()
    for row in range(128):
        triggers = (inputs[row, :-1] == 14).nonzero().flatten().tolist()
        assert len(triggers) == 1 and triggers[0] <= 26
        assert targets[row, -1] == inputs[row, triggers[0] + 1] and targets[row, -1] != 14
    with pytest.raises(ValueError, match="length >= 4"):
        induction_heads(1, 3, 16, _generator())


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_keys_are_distinct_and_each_query_asks_for_its_value(random_non_queries):
    batch, length, pairs, vocab = 256, 64, 8, 256
    inputs, targets = mqar(batch, length, pairs, vocab, _generator(), random_non_queries)
    assert inputs.shape == targets.shape == (batch, length)
    keys, values = inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2]
    assert all(len(set(row.tolist())) == pairs for row in keys)
    assert keys.min() >= 1 and keys.max() < vocab // 2 and values.min() >= vocab // 2 and values.max() < vocab
    scored = targets != IGNORE_INDEX
    assert (scored.sum(1) == pairs).all() and not scored[:, : 2 * pairs].any()
    offsets = []
    for row in range(batch):
        answer = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        for position in scored[row].nonzero().flatten().tolist():
            assert (position - 2 * pairs) % 2 == 0
            assert targets[row, position] == answer[int(inputs[row, position])]
            offsets.append(position - 2 * pairs)
    if random_non_queries:
        assert (inputs[:, 2 * pairs :][~scored[:, 2 * pairs :]] != 0).float().mean() > 0.9
    else:
        assert (inputs[:, 2 * pairs :][~scored[:, 2 * pairs :]] == 0).all()
    # The power law crowds the queries near the start of the region: its first half holds most of them.
    assert (torch.tensor(offsets) < (length - 2 * pairs) // 2).float().mean() > 0.6
    with pytest.raises(ValueError, match="4 \\* pairs <= length"):
        mqar(1, 16, 8, 256, _generator())


def test_copying_scores_the_copy_and_the_end_mark():
    inputs, targets = copying(32, 9, 3, 12, _generator())
    assert inputs.shape == targets.shape == (32, 21)
    for row in range(32):
        size = int((inputs[row] >= 4).sum()) // 2
        assert 3 <= size <= 9 and inputs[row, 0] == 1 and inputs[row, size + 1] == 2 and inputs[row, 2 * size + 2] == 3
        letters = inputs[row, 1 : size + 1]
        assert letters.min() >= 4 and letters.max() <= 11
        assert torch.equal(inputs[row, size + 2 : 2 * size + 2], letters)
        scored = (targets[row] != IGNORE_INDEX).nonzero().flatten()
        assert scored.tolist() == list(range(size + 1, 2 * size + 2))
        assert targets[row, scored].tolist() == letters.tolist() + [3]
        assert (inputs[row, 2 * size + 3 :] == 0).all()
    exact, _ = copying(4, 6, 6, 12, _generator())
    assert ((exact >= 4).sum(1) == 12).all()
    with pytest.raises(ValueError, match="shortest"):
        copying(1, 3, 4, 12, _generator())
