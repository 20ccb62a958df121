"""The hooks plugins implement.

Every hook is a synchronous factory (pluggy cannot await a hook): it returns objects whose
methods the kernel awaits. A plugin is a module or object with functions marked
``@forge_core.hookimpl``, registered in the entry-point group ``forge_core``:

    [project.entry-points.forge_core]
    my_transport = "my_package.plugin"

Each hook returns a list; pluggy collects the lists of all plugins, and the kernel chooses among
the objects by their ``name``.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "forge_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def forge_transports() -> list[Any]:
    """Return transport objects (see ``forge_core.transport.Transport``): each has a ``name``,
    a ``cost`` (lower is preferred), ``reaches(local, peer)``, and async ``listen``,
    ``connect`` and ``close``."""


@hookspec
def forge_routing_policies() -> list[Any]:
    """Return routing-policy factories for services. Each has a ``name`` and, called with the
    service's router options, returns an object with a synchronous
    ``choose(replicas, session_id) -> replica`` that does no I/O."""


@hookspec
def forge_allocators() -> list[Any]:
    """Return GPU allocators. Each has a ``name`` and decides, before a process starts, which
    devices it gets (``CUDA_VISIBLE_DEVICES``) and its torch.distributed environment."""


@hookspec
def forge_gpu_inventory() -> list[Any]:
    """Return the GPU devices of this host as seen by the allocator (a stand-in inventory lets
    allocation be tested on a machine without GPUs)."""


@hookspec
def forge_weight_sync_backends() -> list[Any]:
    """Return weight-sync backends (NCCL, CUDA IPC, shared memory, TCP). Each has a ``name``,
    tells whether it is available here, and moves a versioned state dict from a trainer to
    policy replicas."""
