"""Forge's CPU weight-sync backends: ``shm`` (shared memory on one host) and ``tcp`` (a weight
server in the trainer's process, reached over the kernel's transport from any host).

This module holds only the hook; the backends import torch when they first run, never here
(every Forge process loads its plugins at start-up).
"""

from __future__ import annotations

from forge_core.hookspecs import hookimpl


@hookimpl
def forge_weight_sync_backends() -> list:
    # Imported here, not at the top: every Forge process loads its plugins when it starts, and
    # only those that sync weights ask for backends.
    from .shm import ShmBackend
    from .tcp import TcpBackend

    return [ShmBackend(), TcpBackend()]
