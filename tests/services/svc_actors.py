"""Actor classes the service tests run as replicas (importable by name in child processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from forge_core import ForgeActor, endpoint
from forge_core.actor import Actor


class Worker(ForgeActor):
    """A replica that reports who it is. ``marker_dir`` lets a test make later starts fail."""

    def __init__(self, tag: str = "w", marker_dir: str | None = None):
        self.tag = tag
        self.marker_dir = marker_dir
        self.setup_runs = 0
        self.calls = 0

    async def setup(self):  # not marked: ForgeActor makes setup an endpoint anyway
        if self.marker_dir is not None:
            with open(os.path.join(self.marker_dir, "starts"), "a") as f:
                f.write(f"{os.getpid()}\n")
            if os.path.exists(os.path.join(self.marker_dir, "crash")):
                os._exit(7)  # a replica that dies while starting, every time
        self.setup_runs += 1

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def info(self) -> dict:
        return {"pid": os.getpid(), "tag": self.tag, "setup_runs": self.setup_runs,
                "replica": int(os.environ["FORGE_REPLICA_INDEX"]) if
                "FORGE_REPLICA_INDEX" in os.environ else None, "calls": self.calls}

    @endpoint
    def count(self) -> int:
        self.calls += 1
        return self.calls

    @endpoint
    def boom(self) -> None:
        self.calls += 1
        raise ValueError("boom on purpose")

    @endpoint(concurrent=True)
    async def work(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @endpoint(concurrent=True, retry=False)
    async def work_once(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @endpoint(retry=False)
    def hang(self, seconds: float) -> None:
        time.sleep(seconds)  # blocks the replica's event loop: its liveness probes go unanswered

    @endpoint
    def kill_me(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class BadSetup(ForgeActor):
    @endpoint
    async def setup(self):
        raise RuntimeError("no model here")

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class BadInit(ForgeActor):
    def __init__(self):
        raise RuntimeError("cannot construct")

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class Client(Actor):
    """Routes through a service interface it was handed (interfaces travel)."""

    @endpoint
    async def route_pids(self, service, count: int) -> list:
        return [await service.pid.route() for _ in range(count)]

    @endpoint
    async def healthy_count(self, service) -> int:
        return sum(1 for m in service.metrics() if m.state == "healthy")
