"""Batch order is a function of (seed, epoch), ranks are disjoint, events are spread."""

import pytest
import torch

from ctvl.data.sampler import EpochBatchSampler, spread_events


def test_order_is_deterministic_and_changes_per_epoch():
    a, b = EpochBatchSampler(50, 4, seed=3), EpochBatchSampler(50, 4, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_and_equal_length(world):
    shards = [list(EpochBatchSampler(50, 4, rank=r, world_size=world, seed=0)) for r in range(world)]
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))
    assert len({len(s) for s in shards}) == 1
    assert all(len(b) == 4 for s in shards for b in s)


def test_eval_sampler_keeps_every_sample_in_order():
    batches = list(EpochBatchSampler(10, 4, drop_last=False, shuffle=False))
    assert [i for b in batches for i in b] == list(range(10))


def test_every_batch_gets_an_event_when_enough_exist():
    events = torch.zeros(48, dtype=torch.bool)
    events[:6] = True  # 6 events, 12 batches of 4: only half can get one
    batches = list(EpochBatchSampler(48, 4, seed=0, events=events))
    with_event = sum(bool(events[b].any()) for b in batches)
    assert with_event == 6
    events[:12] = True
    batches = list(EpochBatchSampler(48, 4, seed=1, events=events))
    assert all(events[b].any() for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(48))


def test_spread_events_keeps_batch_sizes():
    events = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    out = spread_events([[0, 1, 2, 3], [4, 5, 6, 7]], events)
    assert [len(b) for b in out] == [4, 4]
    assert all(events[b].any() for b in out)
