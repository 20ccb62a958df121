"""Actor classes the reliability tests spawn (importable by name in child processes)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

from forge_core import ForgeActor, endpoint
from forge_core.actor import Actor


class Replica(ForgeActor):
    """A service replica under fault injection: answers who it is, works, or hangs."""

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint(concurrent=True)
    async def work(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @endpoint
    def quick(self) -> int:
        return os.getpid()

    @endpoint(retry=False)
    def hang(self, seconds: float) -> None:
        time.sleep(seconds)  # holds the event loop: liveness probes go unanswered

    @endpoint
    def raise_unpicklable(self) -> None:
        raise LockedError("holds a lock")


class LockedError(Exception):
    """An exception that cannot be pickled: it carries a lock."""

    def __init__(self, text: str):
        super().__init__(text)
        self.lock = threading.Lock()


class PickyError(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` wants two arguments and ``args`` has one
    (the classic custom-exception mistake)."""

    def __init__(self, text: str, code: int):
        super().__init__(text)
        self.code = code


class Refuses:
    """Pickles, but raises while being unpickled (wherever that is)."""

    def __reduce__(self):
        return (_refuse, ("this object refuses to be unpickled",))


def _refuse(text: str):
    raise ValueError(text)


def nested(depth: int) -> list:
    """A list nested ``depth`` deep: deeper than the pickler's recursion allows."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


class Sink(Actor):
    """Receives large payloads and remembers a digest of each one it was handed whole."""

    def __init__(self) -> None:
        self.digests: list[tuple[int, str]] = []

    @endpoint
    def take(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.digests.append((len(data), digest))
        return digest

    @endpoint
    def received(self) -> list:
        return self.digests

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def echo(self, value):
        return value

    @endpoint
    def raise_picky(self) -> None:
        raise PickyError("picky", 7)

    @endpoint
    def raise_locked(self) -> None:
        raise LockedError("holds a lock")

    @endpoint
    def give_refuses(self):
        return Refuses()

    @endpoint
    def give_nested(self, depth: int):
        return nested(depth)


class Sender(Actor):
    """Sends one large payload to a sink, announcing the moment it starts sending."""

    @endpoint
    async def send(self, sink, nbytes: int, marker: str) -> str:
        data = payload(nbytes)
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        return await sink.take.call_one(data)

    @endpoint
    async def ask(self, sink) -> list:
        return await sink.received.call_one()


def payload(nbytes: int) -> bytes:
    """Bytes whose digest catches any torn or reordered chunk (not one repeated byte)."""
    block = hashlib.sha256(b"forge").digest() * 2048  # 64 KiB
    whole, rest = divmod(nbytes, len(block))
    return block * whole + block[:rest]
