"""What a controller tells interfaces about its replicas, and what ``metrics()`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Replica states. Only HEALTHY replicas are routed to.
STARTING = "starting"  # spawning, constructing, running setup (first time or after scale)
HEALTHY = "healthy"
RESTARTING = "restarting"  # died or hung; being replaced (with backoff if it keeps failing)
FAILED = "failed"  # kept failing to start; given up (``error`` says why)
STOPPING = "stopping"  # scaled away or shutting down
STOPPED = "stopped"
UNHEALTHY = "unhealthy"  # an interface saw it die before its controller said so


@dataclass(frozen=True)
class ReplicaEntry:
    index: int
    name: str  # the same for every generation: "Policy.r0"
    generation: int  # 1 for the first start, +1 for each restart
    state: str
    mesh: Any  # the replica's ActorMesh while HEALTHY, else None
    proc_ids: tuple[str, ...]
    error: str | None = None  # why it last died or failed to start


@dataclass(frozen=True)
class ServiceView:
    """A versioned snapshot of a service's replicas; a higher version supersedes."""

    version: int
    stopped: bool
    replicas: tuple[ReplicaEntry, ...]


@dataclass(frozen=True)
class ReplicaMetrics:
    """One replica as seen from one ``ServiceInterface`` copy.

    The counts and latencies are those of the calls this copy made (where latency is felt),
    over every generation of the replica; ``state`` comes from the controller.
    """

    index: int
    name: str
    state: str
    generation: int
    in_flight: int
    completed: int
    failed: int  # calls that raised: endpoint errors (ActorError) and replica deaths
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    error: str | None = None
