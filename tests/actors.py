"""Actor classes the kernel tests spawn (importable by name in child processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from forge_core.actor import Actor, current_rank, current_size, endpoint


class Counter(Actor):
    def __init__(self, initial_value: int = 0):
        self.value = initial_value
        self.log: list = []

    @endpoint
    def increment(self, by: int = 1) -> None:
        self.value += by

    @endpoint
    def get_value(self) -> int:
        return self.value

    @endpoint
    async def aget_value(self) -> int:
        await asyncio.sleep(0)
        return self.value

    @endpoint
    def append(self, item) -> None:
        self.log.append(item)

    @endpoint
    async def aappend(self, item) -> None:
        await asyncio.sleep(0)
        self.log.append(item)

    @endpoint
    def get_log(self) -> list:
        return self.log

    @endpoint
    def where(self) -> tuple:
        point = current_rank()
        return point.rank, dict(point), current_size()

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def boom(self, text: str = "boom") -> None:
        raise ValueError(text)

    @endpoint
    def unpicklable_result(self):
        import threading

        return threading.Lock()  # locks cannot be pickled

    @endpoint
    def die(self, how: str) -> None:
        if how == "exit":
            os._exit(3)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "segfault":
            import ctypes

            ctypes.string_at(0)

    @endpoint
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @endpoint(concurrent=True)
    async def asleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @endpoint(concurrent=True)
    async def adie(self, how: str) -> None:
        self.die(how)

    @endpoint
    def modules(self) -> list:
        return sorted(sys.modules)

    @endpoint
    def echo(self, value):
        return value

    def not_an_endpoint(self) -> int:
        return 1


class Overlapping(Actor):
    """Counts how many calls run at once."""

    def __init__(self):
        self.running = 0
        self.peak = 0

    @endpoint
    async def serial(self, seconds: float) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.peak

    @endpoint(concurrent=True)
    async def overlapping(self, seconds: float) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.peak

    @endpoint
    def reset(self) -> None:
        self.peak = 0


class BadInit(Actor):
    def __init__(self):
        raise RuntimeError("cannot start")

    @endpoint
    def ping(self) -> str:
        return "pong"


class Caller(Actor):
    """Calls another mesh it was handed (handles travel)."""

    @endpoint
    async def total(self, counters) -> int:
        values = await counters.get_value.call()
        return sum(values)


class Where(Actor):
    """Reports where it runs (for multi-host tests)."""

    @endpoint
    def where(self):
        return (current_rank().rank, os.environ.get("FORGE_HOST_ID"), os.environ.get("RANK"),
                os.environ.get("WORLD_SIZE"), os.getpid())

    @endpoint(concurrent=True)  # it calls its own mesh, itself included: must not block
    async def call_other(self, mesh) -> list:
        return [w[1] for w in await mesh.where.call()]


from forge_core import ForgeActor  # noqa: E402


class HostReplica(ForgeActor):
    """A service replica that says which host it runs on."""

    @endpoint
    def host(self) -> str:
        return os.environ.get("FORGE_HOST_ID", "?")
