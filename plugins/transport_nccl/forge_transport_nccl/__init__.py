"""Forge's GPU weight-sync backends: ``cuda_ipc`` (a replica on the trainer's GPU maps the
snapshot and copies it device to device) and ``nccl`` (a broadcast from the trainer's GPU to
the replicas' GPUs, through cupy's NCCL bindings).

This module holds only the hook. Neither torch nor cupy is imported here: without them, or
without a GPU, each backend says so by name from ``available()``.
"""

from __future__ import annotations

from forge_core.hookspecs import hookimpl


@hookimpl
def forge_weight_sync_backends() -> list:
    # Imported here, not at the top: every Forge process loads its plugins when it starts, and
    # only those that sync weights ask for backends.
    from .cuda_ipc import CudaIpcBackend
    from .nccl import NcclBackend

    return [CudaIpcBackend(), NcclBackend()]
