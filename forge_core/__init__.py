"""Forge: actors on process meshes and replicated services, for RL post-training.

The actor API lives in ``forge_core.actor``; plugin authors start at ``forge_core.hookspecs``
and ``forge_core.transport``.
"""

from .actor import Actor, ActorError, Future, SupervisionError, endpoint
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Actor", "ActorError", "Future", "SupervisionError", "endpoint", "hookimpl",
           "__version__"]
