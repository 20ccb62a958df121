"""Actors the observability tests spawn (importable by name in their processes)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from forge_core import ForgeActor
from forge_core.actor import Actor, current_rank, endpoint
from forge_core.observe import record_metric


class Worker(Actor):
    @endpoint
    def nap(self, seconds: float) -> int:
        time.sleep(seconds)  # the line forge doctor must name
        return 1

    @endpoint
    async def hang(self) -> None:
        await asyncio.Event().wait()  # never set

    @endpoint
    def ping(self) -> int:
        return current_rank().rank

    @endpoint
    def say(self, text: str) -> None:
        print(text, flush=True)

    @endpoint
    def say_many(self, texts: list[str]) -> None:
        for text in texts:
            print(text, flush=True)

    @endpoint
    def say_and_die(self, text: str) -> None:
        sys.stdout.write(text + "\n")  # line-buffered: written before the next line runs
        os._exit(3)

    @endpoint
    def record(self, value: float) -> None:
        record_metric("work_done", value, reduce="sum")
        record_metric("work_max", value, reduce="max")
        record_metric("work_mean", value, reduce="mean")

    @endpoint
    def fail(self) -> None:
        raise ValueError("this endpoint always fails")


class Echo(ForgeActor):
    @endpoint
    def echo(self, x: int) -> int:
        return x

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class SlowStart(Echo):
    """Takes 2 s to come up: a restart is visible on the dashboard for a while."""

    @endpoint
    async def setup(self) -> None:
        await asyncio.sleep(2)


class Caller(Actor):
    """Calls another actor from inside its endpoint: one trace must cover both."""

    def __init__(self, worker):
        self.worker = worker

    @endpoint
    async def relay(self) -> int:
        return await self.worker.ping.call_one()
