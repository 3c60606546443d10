"""Deterministic, resumable, rank-sharded batch sampling (optionally event-aware).

``EpochBatchSampler`` yields lists of dataset indices for one rank. The order is a
pure function of ``(seed, epoch)``, so a resumed run that skips the batches it
already consumed sees exactly the data an uninterrupted run would have seen.

With ``events`` given, every micro-batch of every rank holds at least one event
when the cohort has enough events: small CT batches otherwise often have none, and
a Cox loss over an event-free batch carries no signal (it is defined as 0).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch


class EpochBatchSampler:
    """Shuffled micro-batches for one rank.

    Args:
        num_samples: dataset length.
        batch_size: micro-batch size per rank.
        rank, world_size: data-parallel position; each rank gets every ``world_size``-th batch.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        events: optional bool sequence (num_samples,): make every batch hold >= 1 event where possible.
        drop_last: drop the last incomplete global round so all ranks step together (training);
            False keeps everything (evaluation).
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 events: Optional[Sequence[bool]] = None, drop_last: bool = True, shuffle: bool = True):
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.events = None if events is None else torch.as_tensor(list(events), dtype=torch.bool)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, self.num_samples, self.batch_size)]
        if self.drop_last:
            usable = (self.num_samples // (self.batch_size * self.world_size)) * self.world_size
            batches = batches[:usable]
        if self.events is not None:
            batches = spread_events(batches, self.events)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._global_batches()[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self._global_batches()[self.rank::self.world_size])


def spread_events(batches: list[list[int]], events: torch.Tensor) -> list[list[int]]:
    """Swap samples between batches so that each batch holds >= 1 event, while events suffice.

    A batch without an event takes one from the batch holding the most events (>= 2),
    giving back one of its censored samples; batch sizes and the multiset of samples are kept.
    """
    batches = [list(b) for b in batches]
    n_events = [int(events[b].sum()) for b in batches]
    for i, batch in enumerate(batches):
        if n_events[i] > 0:
            continue
        donor = max(range(len(batches)), key=lambda j: n_events[j])
        if n_events[donor] < 2:
            break  # too few events left to give every batch one
        give = next(k for k, idx in enumerate(batches[donor]) if events[idx])
        batches[donor][give], batch[0] = batch[0], batches[donor][give]
        n_events[donor] -= 1
        n_events[i] += 1
    return batches
