"""Deterministic, resumable batches grouped by bucket (clips of one shape stack into one tensor).

Every rank computes the same sequence of *global* batches from (seed, epoch) alone and takes its own slice, so the
data a step sees depends neither on the number of processes nor on restarts: a run resumed from a checkpoint (which
stores the `DataPosition`) continues with exactly the batch it would have drawn next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np


@dataclass
class DataPosition:
    """Where a run is in its data stream."""

    epoch: int = 0  # passes over the data begun so far, minus one
    batch: int = 0  # batches of this epoch already handed out

    def to_dict(self) -> dict:
        return asdict(self)


def epoch_batches(keys: Sequence[Hashable], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of one epoch: item indices shuffled by (seed, epoch), grouped by bucket key.

    Each bucket's last partial batch is filled up with that bucket's first items of this epoch, so every item is
    seen once per epoch even when a bucket holds fewer items than a batch. Batch order is shuffled too.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    rng = np.random.default_rng([seed, epoch])
    by_bucket: dict[Hashable, list[int]] = {}
    for i in rng.permutation(len(keys)).tolist():
        by_bucket.setdefault(keys[i], []).append(i)
    out = []
    for items in by_bucket.values():
        n_batches = -(-len(items) // batch)
        padded = (items * (-(-n_batches * batch // len(items))))[: n_batches * batch]
        out += [padded[j * batch:(j + 1) * batch] for j in range(n_batches)]
    return [out[j] for j in rng.permutation(len(out)).tolist()]


class BatchStream:
    """An endless stream of global batches over epochs; `position` is what a checkpoint must store."""

    def __init__(self, keys: Sequence[Hashable], batch: int, seed: int, position: DataPosition | None = None):
        if not keys:
            raise ValueError("the dataset is empty")
        self.keys, self.batch, self.seed = list(keys), batch, seed
        self.position = position or DataPosition()
        self._epoch, self._batches = -1, []

    def _epoch_list(self) -> list[list[int]]:
        if self._epoch != self.position.epoch:
            self._epoch, self._batches = self.position.epoch, epoch_batches(self.keys, self.batch, self.seed,
                                                                            self.position.epoch)
        return self._batches

    def next(self) -> list[int]:
        """The next global batch (item indices, all from one bucket)."""
        while self.position.batch >= len(self._epoch_list()):
            self.position = DataPosition(self.position.epoch + 1, 0)
        out = self._epoch_list()[self.position.batch]
        self.position = DataPosition(self.position.epoch, self.position.batch + 1)
        return out


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's part of a global batch of n (n divisible by world)."""
    if n % world:
        raise ValueError(f"the global batch {n} must be divisible by the number of processes {world}")
    per = n // world
    return slice(rank * per, (rank + 1) * per)
