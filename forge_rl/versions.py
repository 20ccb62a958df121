"""Which weights a policy replica should serve: the latest published version.

The trainer publishes a ``WeightsHandle`` per step (``forge_core.weights``); the loop records
it in a ``LatestWeights`` actor before it tells the replicas. A replica that a service starts
or restarts asks that actor in its ``setup()`` and loads the handle before it takes traffic,
so a recovered replica never serves silently stale weights.
"""

from __future__ import annotations

from typing import Any

from forge_core.actor import Actor, endpoint


class LatestWeights(Actor):
    """Holds the newest ``WeightsHandle`` (small and picklable); spawn it in the loop's
    process: ``this_proc().spawn("latest_weights", LatestWeights)``."""

    def __init__(self) -> None:
        self.handle: Any = None

    @endpoint
    def publish(self, handle: Any) -> int:
        if self.handle is None or handle.version > self.handle.version:
            self.handle = handle
        return self.handle.version

    @endpoint
    def latest(self) -> Any:
        """The newest handle, or None before the first publish."""
        return self.handle


async def load_latest(registry: Any, gate: Any, target: Any) -> int | None:
    """In a policy's ``setup()``: load the newest published weights through ``gate`` (a
    ``WeightsGate``) into ``target``; returns the version now served (None: none published
    yet, the replica serves its initial weights)."""
    if registry is None:
        return gate.version
    handle = await registry.latest.call_one()
    if handle is not None:
        await gate.update(handle, target)
    return gate.version
