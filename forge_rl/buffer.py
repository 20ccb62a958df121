"""The replay buffer: scored groups in, training batches out, never older than the bound.

Every group carries the policy version that generated it. ``sample(batch_size,
current_version)`` hands out the oldest groups (by their place in the run) whose version is at
least ``current_version - max_policy_age``, and drops, for good, every group older than that,
counting them: a training step never sees a sample from weights more than ``max_policy_age``
versions behind the trainer, and users can read how much the bound cost them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from forge_core import ForgeActor, endpoint

from .types import ScoredGroup


@dataclass(frozen=True)
class SampleRecord:
    """What one ``sample`` call handed out: the trainer's version and each group's version."""

    current_version: int
    policy_versions: tuple[int, ...]

    @property
    def max_age(self) -> int:
        return max((self.current_version - v for v in self.policy_versions), default=0)


class ReplayBuffer(ForgeActor):
    """A replay buffer actor: ``await ReplayBuffer.as_actor(max_policy_age=1)``.

    ``capacity`` bounds the groups held; past it the oldest go first (counted as
    ``dropped_full``). Each group is handed out once.
    """

    def __init__(self, max_policy_age: int = 1, capacity: int = 100_000):
        if max_policy_age < 0:
            raise ValueError(f"max_policy_age must be >= 0, not {max_policy_age}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.max_policy_age = max_policy_age
        self.capacity = capacity
        self._heap: list[tuple[int, int, ScoredGroup]] = []  # (index, arrival, group): oldest first
        self._arrivals = 0
        self.added = 0
        self.sampled = 0
        self.dropped_stale = 0
        self.dropped_full = 0
        self._records: list[SampleRecord] = []

    @endpoint
    def add(self, groups: list[ScoredGroup]) -> int:
        """Store ``groups``; returns how many the buffer now holds."""
        for group in groups:
            if not isinstance(group, ScoredGroup):
                raise TypeError(f"ReplayBuffer.add takes ScoredGroup items, not "
                                f"{type(group).__name__}")
            heapq.heappush(self._heap, (group.index, self._arrivals, group))
            self._arrivals += 1
        self.added += len(groups)
        while len(self._heap) > self.capacity:
            heapq.heappop(self._heap)
            self.dropped_full += 1
        return len(self._heap)

    @endpoint
    def sample(self, batch_size: int, current_version: int) -> list[ScoredGroup]:
        """Up to ``batch_size`` groups, oldest first, none older than the bound (see module
        docstring); fewer, or none, if the buffer does not hold that many fresh ones."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, not {batch_size}")
        oldest_allowed = current_version - self.max_policy_age
        batch: list[ScoredGroup] = []
        keep: list[tuple[int, int, ScoredGroup]] = []
        while self._heap and len(batch) < batch_size:
            item = heapq.heappop(self._heap)
            if item[2].policy_version < oldest_allowed:
                self.dropped_stale += 1
            else:
                batch.append(item[2])
        # Stale groups that were not reached this time are dropped too: they can only age.
        for item in self._heap:
            if item[2].policy_version < oldest_allowed:
                self.dropped_stale += 1
            else:
                keep.append(item)
        heapq.heapify(keep)
        self._heap = keep
        self.sampled += len(batch)
        self._records.append(SampleRecord(current_version,
                                          tuple(g.policy_version for g in batch)))
        return batch

    @endpoint
    def stats(self) -> dict[str, int]:
        return {"size": len(self._heap), "added": self.added, "sampled": self.sampled,
                "dropped_stale": self.dropped_stale, "dropped_full": self.dropped_full,
                "max_policy_age": self.max_policy_age}

    @endpoint
    def records(self) -> list[SampleRecord]:
        """Every ``sample`` call so far: the evidence that the staleness bound held."""
        return list(self._records)
