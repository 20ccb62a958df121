"""A figure: one measurement for one transport, over repeats, beside its floor.

A figure holds one sample per repeat (each sample is itself a median or a percentile over many
calls) and is reported as the median of its samples with their min, max and count: one run of a
benchmark on a shared machine says little. Its floor is sampled in the same repeats.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class Figure:
    section: str              # latency, pipelined, mesh, tensor, weights, services
    name: str                 # "rtt p50", "tensor 64 MiB", ...
    transport: str            # in-process, shm, tcp, a weight-sync backend or a routing policy
    unit: str                 # us, ms, s, calls/s, GB/s
    higher_is_better: bool
    samples: list[float]      # one per repeat
    floor: str | None = None  # what the floor is: "tcp ping-pong", "memcpy", ...
    floor_samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}/{self.name}/{self.transport}"

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    @property
    def repeats(self) -> int:
        return len(self.samples)

    @property
    def floor_median(self) -> float | None:
        return statistics.median(self.floor_samples) if self.floor_samples else None

    @property
    def ratio(self) -> float | None:
        """Ours over the floor: for times, how many floors a call takes (>= 1 is expected);
        for rates, the share of the floor reached (<= 1 is expected)."""
        floor = self.floor_median
        return self.median / floor if floor else None

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(key=self.key, median=self.median, min=self.low, max=self.high,
                   repeats=self.repeats, floor_median=self.floor_median, ratio=self.ratio)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Figure":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
