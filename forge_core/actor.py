"""The actor API, in Monarch's shape: ``from forge_core.actor import Actor, endpoint, ...``."""

from ._endpoint import endpoint
from ._future import Future
from ._mesh import (
    ActorMesh,
    EndpointRef,
    HostMesh,
    ProcMesh,
    current_rank,
    current_size,
    spawn_cluster_procs,
    spawn_procs,
    this_host,
    this_proc,
)
from ._shape import Point, ValueMesh
from .errors import ActorError, SupervisionError


class Actor:
    """Base class of actors. Mark the methods other processes may call with ``@endpoint``.

    An actor handles one message at a time, in the order each sender sent them; it keeps its
    state between calls and shares none with other actors (arguments arrive as copies).
    """


__all__ = [
    "Actor", "ActorError", "ActorMesh", "EndpointRef", "Future", "HostMesh", "Point", "ProcMesh",
    "SupervisionError", "ValueMesh", "current_rank", "current_size", "endpoint",
    "spawn_cluster_procs", "spawn_procs", "this_host", "this_proc",
]
