"""One replica of a service, as its controller sees it: processes, actor, state, probes.

A replica is an actor mesh on a process mesh of its own (``procs`` processes), so it can be
replaced alone. Every generation of a replica gets the same actor name (``Policy.r0``): a
restart makes new processes, never a new name.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from .. import _messages as m
from .. import _wire
from .._future import RawFuture
from .._mesh import ActorMesh, ProcMesh, spawn_cluster_procs, spawn_procs
from .._runtime import Runtime
from ..errors import SupervisionError
from ..transport import ProcInfo
from ._options import ServiceConfig
from ._view import STARTING, ReplicaEntry


@dataclass(frozen=True)
class ReplicaRecipe:
    """How to make (and remake) every replica of a service: the same arguments each time."""

    service: str
    actor_class: type
    args: tuple
    kwargs: dict
    config: ServiceConfig
    has_setup: bool


class Replica:
    def __init__(self, index: int, service: str):
        self.index = index
        self.name = f"{service}.r{index}"
        self.generation = 0
        self.state = STARTING
        self.procs: ProcMesh | None = None
        self.mesh: ActorMesh | None = None
        self.infos: list[ProcInfo] = []
        self.error: str | None = None
        self.failures = 0  # consecutive failed starts (and deaths right after starting)
        self.healthy_since = 0.0
        self.retired = False  # scaled away or shut down: never restart it

    async def start(self, recipe: ReplicaRecipe) -> None:
        """Start a new generation: processes, constructor, ``setup``. Raises (having stopped
        whatever it started) if the replica does not come up within ``start_timeout``."""
        self.generation += 1
        self.infos = []
        config = recipe.config
        env = {"FORGE_SERVICE": recipe.service, "FORGE_REPLICA_INDEX": str(self.index),
               **config.env}
        sizes = {config.dimension: config.procs}
        if config.hosts:
            procs = spawn_cluster_procs(list(config.hosts), sizes, env=env, name=self.name)
        else:
            procs = spawn_procs(sizes, env=env, name=self.name, logs=config.logs,
                                log_file=config.log_file)
        self.procs = procs
        try:
            self.mesh = procs.spawn(self.name, recipe.actor_class, *recipe.args, **recipe.kwargs)
            await asyncio.wait_for(self._come_up(recipe), config.start_timeout or None)
        except BaseException:
            await self.stop()
            raise

    async def _come_up(self, recipe: ReplicaRecipe) -> None:
        assert self.mesh is not None and self.procs is not None
        await constructed(self.mesh)
        # The ProcInfos (ids for supervision, pids for killing a hung replica) are known once
        # the mesh is up; the kernel keeps them on the mesh's resolved future.
        self.infos = list(self.procs._procs.result())
        if recipe.has_setup:
            await self.mesh.setup.call()
        dead = Runtime.get().dead
        if any(info.proc_id in dead for info in self.infos):
            raise SupervisionError(f"{self.name} died while starting")

    def mark_healthy(self, state: str) -> None:
        self.state = state
        self.error = None
        self.healthy_since = time.monotonic()

    def kill(self) -> None:
        """SIGKILL every process of this generation at once (a hung process cannot be asked)."""
        here = Runtime.get().info.host_id
        for info in self.infos:
            if info.host_id != here:
                continue  # a remote process: ``stop()`` asks its host to end it
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """End this generation's processes (within 5 s; the kernel kills stragglers)."""
        procs, self.procs, self.mesh = self.procs, None, None
        if procs is not None:
            await procs.stop()

    async def probe(self, timeout: float) -> str | None:
        """Ping every process of the replica; None if all answered within ``timeout``, else why
        not. The kernel answers a ping on the process's event loop, so a loop blocked by a
        runaway endpoint fails the probe just as a dead process does."""
        runtime = Runtime.get()
        loop = asyncio.get_running_loop()
        payload, buffers = _wire.dumps(None)
        pings = []
        transport = self.procs._transport if self.procs is not None else None
        for info in self.infos:
            pong = RawFuture(loop=loop)  # the kernel's undecoded-reply sink
            runtime.channel(info, loop, transport).request(m.PING, b"", payload, buffers, pong)
            pings.append(pong)
        try:
            await asyncio.wait_for(asyncio.gather(*pings), timeout)
        except asyncio.TimeoutError:
            return f"it did not answer a liveness probe within {timeout:g} s"
        except SupervisionError as exc:
            return f"it is unreachable: {exc}"
        return None

    def entry(self, routable: set[str]) -> ReplicaEntry:
        mesh = self.mesh if self.state in routable else None
        return ReplicaEntry(self.index, self.name, self.generation, self.state, mesh,
                            tuple(info.proc_id for info in self.infos), self.error)

    def uptime(self) -> float:
        return time.monotonic() - self.healthy_since

    def __repr__(self) -> str:
        return f"<Replica {self.name} gen={self.generation} {self.state}>"


async def constructed(mesh: ActorMesh) -> None:
    """Wait until every actor of ``mesh`` is constructed; raise the first constructor's error.

    (``await mesh.initialized`` would do, but in this kernel version it never resolves when a
    constructor raises: the error escapes a done-callback. Until that is fixed, read the spawn
    outcome the mesh keeps.)"""
    await asyncio.wrap_future(mesh._spawned)
    mesh._targets()  # raises the constructor error, as the mesh's first call would


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else text
    return f"{type(exc).__name__}: {first}" if not first.startswith(type(exc).__name__) else first


def is_stopped_by_someone_else(procs: Any) -> bool:
    """True once ``stop()`` was called on the mesh (a test fixture stopping leftovers, say):
    then its processes' deaths are no failure to recover from."""
    return bool(getattr(procs, "_stopped", False))
