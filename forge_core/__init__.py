"""Forge: actors on process meshes and replicated services, for RL post-training.

The actor API lives in ``forge_core.actor``; plugin authors start at ``forge_core.hookspecs``
and ``forge_core.transport``. The names below are imported on first use, so that a spawned
process, which imports only the runtime, starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Actor": "forge_core.actor",
    "ActorError": "forge_core.errors",
    "SupervisionError": "forge_core.errors",
    "Future": "forge_core._future",
    "endpoint": "forge_core._endpoint",
    "hookimpl": "forge_core.hookspecs",
    "ForgeActor": "forge_core.service",
    "ServiceInterface": "forge_core.service",
    "NoReplicaAvailable": "forge_core.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
