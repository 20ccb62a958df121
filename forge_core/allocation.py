"""Deciding, before a process starts, which devices and CPU cores it gets.

A mesh is planned on the host that starts its processes (this process, or a host agent):
``plan_mesh`` asks the allocator plugin for the devices of each process and returns every
process's environment: ``CUDA_VISIBLE_DEVICES`` for GPU processes, the ``torch.distributed``
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) for every process, and ``FORGE_CPU_AFFINITY`` when cores were asked for (the
bootstrap applies it before anything else runs). Nothing is patched after a process starts.

The allocator and the inventory it draws from are plugins (``forge_allocators``,
``forge_gpu_inventory``): the logic is tested on a machine without GPUs through a stand-in
inventory (``FORGE_FAKE_GPUS=8``).
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import plugins
from .errors import ForgeError

ALLOCATOR_ENV = "FORGE_ALLOCATOR"  # which allocator plugin, by name (default: "default")
STRICT_ENV = "FORGE_STRICT_GPUS"  # "1": asking for GPUs on a host without them is an error


class AllocationError(ForgeError):
    """Not enough devices, or devices asked for where there are none (strict mode)."""


@dataclass
class Request:
    """What one mesh asks of one host."""

    owner: str  # who will hold the devices, for error messages ("ProcMesh gpus=4 of pid 12")
    procs: int  # processes to start on this host
    gpus_per_proc: int = 0
    cpus_per_proc: int = 0  # 0: no binding
    numa: bool = False  # bind each process to one NUMA node instead of single cores
    strict: bool = False


@dataclass
class Grant:
    """Devices and cores for each process of a request, and how to give them back."""

    gpus: list[list[str]]  # per process: device ids as the host sees them ([] without GPUs)
    cpus: list[list[int]]  # per process: cores to bind to ([] for no binding)
    release: Callable[[], None] = field(default=lambda: None)


class Allocator(Protocol):
    name: str

    def grant(self, request: Request) -> Grant:
        """Reserve what ``request`` asks for at once, or raise ``AllocationError`` saying how
        many devices are free and who holds the rest."""


def allocator(name: str | None = None) -> Allocator | None:
    available = plugins.allocators()
    wanted = name or os.environ.get(ALLOCATOR_ENV)
    if wanted:
        return plugins.require("allocator", wanted, available,
                               "Install forge-allocators (pip install -e plugins/allocators).")
    return available.get("default") or next(iter(available.values()), None)


def strict_default() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "no")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def plan_mesh(request: Request, first_rank: int = 0, world_size: int | None = None,
              master: tuple[str, int] | None = None, allocator_name: str | None = None
              ) -> tuple[list[dict[str, str]], Callable[[], None]]:
    """Every process's environment for ``request`` on this host, and the release function."""
    world_size = world_size if world_size is not None else request.procs
    wants_devices = request.gpus_per_proc > 0 or request.cpus_per_proc > 0 or request.numa
    chosen = allocator(allocator_name) if wants_devices else None
    if chosen is None:
        if request.gpus_per_proc > 0:
            _no_gpus(request, "no allocator plugin is installed (pip install -e plugins/allocators)")
        grant = Grant(gpus=[[] for _ in range(request.procs)], cpus=[[] for _ in range(request.procs)])
    else:
        grant = chosen.grant(request)
        if request.gpus_per_proc > 0 and not any(grant.gpus):
            _no_gpus(request, "this host has no GPU")
    master_addr, master_port = master or ("127.0.0.1", free_port())
    envs = []
    for local_rank in range(request.procs):
        env = {
            "RANK": str(first_rank + local_rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(request.procs),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        }
        if grant.gpus[local_rank]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(grant.gpus[local_rank])
        if grant.cpus[local_rank]:
            env["FORGE_CPU_AFFINITY"] = ",".join(map(str, grant.cpus[local_rank]))
        envs.append(env)
    return envs, grant.release


_warned = False


def _no_gpus(request: Request, why: str) -> None:
    global _warned
    if request.strict:
        raise AllocationError(f"{request.owner} asks for {request.gpus_per_proc} GPU(s) per "
                              f"process, but {why} (strict mode: {STRICT_ENV}=1 or strict=True)")
    if not _warned:
        _warned = True
        warnings.warn(f"{why}: GPU processes start as CPU processes (set {STRICT_ENV}=1 to make "
                      f"this an error)", RuntimeWarning, stacklevel=4)


def describe_holders(holders: dict[Any, tuple[str, int]]) -> str:
    if not holders:
        return "nobody"
    return ", ".join(f"{owner} ({count})" for owner, count in holders.values())
