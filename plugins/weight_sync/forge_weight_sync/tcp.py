"""The ``tcp`` backend: replicas anywhere fetch a version from a weight server in the trainer.

The weight server is a small actor that the first publisher of a process spawns there
(``this_proc().spawn``). A replica asks it for the version in chunks of whole tensors (about
``CHUNK_BYTES`` each, a few in flight at once), so the kernel's reader copies one chunk into the
model while the next ones are on the wire. Each chunk is a uint8 tensor: it travels out of band
over the kernel's transport (TCP between hosts: scatter-gather from the trainer's memory, read
straight into one buffer at the replica), never through the pickle stream.

Lifetimes: a chunk being sent keeps a reference to the memory it came from until the transport
has written it, so the server only ever sends memory that is never rewritten: its own snapshot
(fresh per version when ``tcp`` is the publisher's first backend), or a private copy made on the
first request when another backend owns the snapshot (shared memory that gets reused, or GPU
memory). Retiring a version drops the server's references, except that a reader already part
way through it is served to the end (``GRACE_S``): a replica never keeps half a version.

The server and the publishers of its process share ``_served`` (one process, one event loop
thread or a worker's): actors share no state with each other, but this is machinery.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, AsyncIterator, Mapping, NamedTuple

from forge_core.actor import Actor, ActorError, SupervisionError, endpoint, this_proc
from forge_core.weights import (
    Chunk, Snapshot, SourceUnreachable, StaleWeightsError, TensorLayout, WeightsHandle,
)

CHUNK_BYTES = 64 << 20
WINDOW = 3  # chunk requests in flight per reader
# A retired version is still served to readers already part way through it (a reader must never
# be left with half a version in its model) until nobody asked for it for this long.
GRACE_S = 10.0


class TcpSource(NamedTuple):
    server: Any  # ActorMesh of the WeightServer in the trainer's process
    publisher_id: str


class TcpBackend:
    name = "tcp"
    device = "cpu"
    private_chunks = True  # every chunk arrives in a buffer of its own

    def available(self) -> tuple[bool, str]:
        return True, ""

    def publisher(self, options: Mapping[str, Any]) -> "TcpPublisher":
        return TcpPublisher(str(options.get("publisher_id") or id(self)))

    async def read(self, handle: WeightsHandle, source: TcpSource) -> AsyncIterator[Chunk]:
        plan = plan_chunks(handle.layout, CHUNK_BYTES)
        pending: deque = deque()

        def ask(index: int) -> Any:
            first, stop, start, end = plan[index]
            return source.server.chunk.call_one(source.publisher_id, handle.version, start, end)

        asked = 0
        try:
            while asked < min(WINDOW, len(plan)):
                pending.append(ask(asked))
                asked += 1
            for index, (first, stop, _, _) in enumerate(plan):
                try:
                    data = await pending.popleft()
                except ActorError as exc:
                    if isinstance(exc.exception, StaleWeightsError):
                        raise exc.exception from None
                    raise
                except SupervisionError as exc:
                    if index == 0:
                        raise SourceUnreachable(f"the weight server is gone: {exc}") from None
                    raise
                if asked < len(plan):
                    pending.append(ask(asked))
                    asked += 1
                yield Chunk(first, stop, data)
        finally:
            for future in pending:  # a reader that stops early: nobody will look at these
                asyncio.ensure_future(future).add_done_callback(_ignore)


def _ignore(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def plan_chunks(layout: tuple[TensorLayout, ...], target: int) -> list[tuple[int, int, int, int]]:
    """Group consecutive tensors into chunks of about ``target`` bytes (a larger tensor is a
    chunk alone): ``(first, stop, start byte, end byte)``."""
    plan, first = [], 0
    for index, spec in enumerate(layout):
        start = layout[first].offset
        last = index + 1 == len(layout)
        if last or layout[index + 1].offset + layout[index + 1].nbytes - start > target:
            plan.append((first, index + 1, start, spec.offset + spec.nbytes))
            first = index + 1
    return plan


# ---------------------------------------------------------------------------------------------
# The trainer side


class _Served:
    """One version as the weight server offers it."""

    def __init__(self, snapshot: Snapshot, owned: bool):
        self.snapshot = snapshot
        self._copy = snapshot.flat[:snapshot.nbytes] if owned else None
        self._copying: asyncio.Future | None = None
        self.last_asked = float("-inf")  # never asked: retiring it frees it at once

    async def host_bytes(self) -> Any:
        """The version's bytes in memory nobody rewrites (a copy made once, if needed)."""
        if self._copy is not None:
            return self._copy
        if self._copying is None:
            self._copying = asyncio.ensure_future(self._make_copy())
        return await asyncio.shield(self._copying)

    async def _make_copy(self) -> Any:
        snapshot = self.snapshot
        snapshot.pins += 1  # the owner must not reuse it while we copy
        try:
            flat = snapshot.flat[:snapshot.nbytes]
            self._copy = await asyncio.to_thread(_to_host, flat)
        finally:
            snapshot.pins -= 1
        return self._copy


def _to_host(flat: Any) -> Any:
    import torch

    copy = torch.empty(flat.numel(), dtype=torch.uint8)
    copy.copy_(flat)
    return copy


_served: dict[tuple[str, int], _Served] = {}
_retired: dict[tuple[str, int], _Served] = {}  # only for readers already part way through
_server: Any = None  # this process's WeightServer, spawned by the first publisher


class WeightServer(Actor):
    """Serves the published versions of every publisher in its process."""

    @endpoint(concurrent=True)
    async def chunk(self, publisher_id: str, version: int, start: int, end: int) -> Any:
        key = (publisher_id, version)
        served = _served.get(key) or (_retired.get(key) if start > 0 else None)
        if served is None:
            raise StaleWeightsError(f"weights version {version} is no longer offered (superseded "
                                    f"or its publisher closed); load the newer version's handle")
        served.last_asked = time.monotonic()
        data = await served.host_bytes()
        return data[start:end]


def _retire_later(key: tuple[str, int], served: _Served) -> None:
    _retired[key] = served
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _retired.pop(key, None)
        return

    def check() -> None:
        if time.monotonic() - served.last_asked < GRACE_S:
            loop.call_later(GRACE_S, check)
        elif _retired.get(key) is served:
            del _retired[key]

    loop.call_later(GRACE_S, check)


async def _server_here() -> Any:
    global _server
    if _server is None:
        _server = this_proc().spawn("forge-weight-server", WeightServer)
    await _server.initialized
    return _server


class TcpPublisher:
    def __init__(self, publisher_id: str):
        self._id = publisher_id
        self._versions: set[int] = set()

    def allocate(self, nbytes: int, device: Any) -> Snapshot:
        import torch

        # Fresh memory per version: a chunk still on the wire keeps its memory alive, so none
        # is ever rewritten under it (see the module docstring).
        return Snapshot(torch.empty(nbytes, dtype=torch.uint8), nbytes, owner_state=self)

    async def export(self, snapshot: Snapshot) -> TcpSource:
        server = await _server_here()
        owned = snapshot.owner_state is self
        _served[(self._id, snapshot.version)] = _Served(snapshot, owned)
        self._versions.add(snapshot.version)
        return TcpSource(server, self._id)

    def retire(self, snapshot: Snapshot) -> None:
        key = (self._id, snapshot.version)
        served = _served.pop(key, None)
        self._versions.discard(snapshot.version)
        if served is not None and time.monotonic() - served.last_asked < GRACE_S:
            _retire_later(key, served)

    async def aclose(self) -> None:
        for version in self._versions:
            _served.pop((self._id, version), None)
        for key in [key for key in _retired if key[0] == self._id]:
            del _retired[key]
        self._versions.clear()

    def __repr__(self) -> str:
        return f"<TcpPublisher {self._id} versions={sorted(self._versions)}>"
