"""Actors the shm tests spawn (importable by name in the children; imports torch only when a
test sends a tensor, so that most children start in a fraction of a second)."""

from __future__ import annotations

import gc
import os

from forge_core.actor import Actor, endpoint
from shm_probes import in_shared_memory


class Store(Actor):
    """Receives, inspects and keeps tensors or numpy arrays."""

    def __init__(self):
        self.held = []

    @endpoint
    def inspect(self, value) -> dict:
        value[0] = value[0]  # raises if the memory is read-only
        return {"in_shm": in_shared_memory(value), "sum": float(value.sum()),
                "type": type(value).__name__}

    @endpoint
    def total(self, value) -> float:
        return float(value.sum())

    @endpoint
    def hold(self, value) -> float:
        self.held.append(value)
        return float(value.sum())

    @endpoint
    def held_sums(self) -> list:
        return [float(v.sum()) for v in self.held]

    @endpoint
    def drop(self) -> None:
        self.held.clear()
        gc.collect()

    @endpoint
    def full(self, n: int, value: float, kind: str = "numpy"):
        if kind == "torch":
            import torch

            return torch.full((n,), value)
        import numpy

        return numpy.full(n, value)

    @endpoint
    def echo(self, value):
        return value

    @endpoint
    def pid(self) -> int:
        return os.getpid()
