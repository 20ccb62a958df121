"""Service measurements: ``route()`` beside a direct call, and routing policies under load
with one slow replica.

The slow replica is 250x slower than the others and every call is a concurrent endpoint (a
generator that batches), so a policy that keeps sending to it shows in the p99, and one that
sees calls piling up there shows in the p50 of the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from ..actor import endpoint
from ..service import ForgeActor
from .floors import median, percentile

FAST_S, SLOW_S = 0.002, 0.500
CLIENTS = 12  # calls in flight at once: enough that where calls go decides the latencies
# The slow replica's index: the third, so that a service of the first 2 is the fast-only floor
# and ``scale(3)`` adds the slow one to the same processes.
SLOW_REPLICA = 2


class Bench(ForgeActor):
    def __init__(self, slow_replica: int = -1):
        index = int(os.environ.get("FORGE_REPLICA_INDEX", "-1"))
        self.delay = SLOW_S if index == slow_replica else FAST_S

    @endpoint
    def nop(self) -> None:
        return None

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint(concurrent=True)
    async def work(self) -> float:
        await asyncio.sleep(self.delay)  # a generator that batches: calls overlap
        return self.delay


def routed_by(svc, policy: str):
    """The same service (same replicas, same controller) behind an interface that routes with
    ``policy``: a policy lives in the caller's interface, so this is what a caller that asked
    for ``router=policy`` would have. Built the way the interface is unpickled, which is how
    other processes get one."""
    rebuild, (name, uid, class_name, endpoints, controller, config, view) = svc.__reduce__()
    return rebuild(name, uid, class_name, endpoints, controller,
                   dataclasses.replace(config, router=policy), view)


async def route_vs_call_one(svc, calls: int) -> tuple[float, float]:
    """Median round trips (us) of ``svc.nop.route()`` and of a direct ``call_one()`` to the
    same replica's mesh, interleaved so that both see the same machine."""
    mesh = svc._slots[0].target[1]  # the replica's own ActorMesh: the direct path
    direct, routed = [], []
    for _ in range(calls):
        start = time.perf_counter()
        await mesh.nop.call_one()
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        await svc.nop.route()
        routed.append(time.perf_counter() - start)
    return median(routed) * 1e6, median(direct) * 1e6


async def under_load(svc, seconds: float, clients: int = CLIENTS,
                     sessions: bool = False) -> list[float]:
    """Latencies (ms) of ``work.route()`` from ``clients`` callers for ``seconds``; with
    ``sessions`` each caller runs in a session of its own."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await svc.work.route()
            latencies.append((time.perf_counter() - start) * 1e3)

    async def client() -> None:
        if sessions:
            async with svc.session():
                await loop()
        else:
            await loop()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


async def load_windows(svc, windows: int, seconds: float, sessions: bool = False) -> list[dict]:
    """Per window of ``seconds``: p50/p99 (ms) and count of ``under_load`` calls, after a
    warm-up.

    ``session_sticky`` routes only sessions by itself (other calls go to its fallback), so
    its callers should each hold a session (``sessions=True``): what it is for. Callers wait
    for each answer, so one held by the slow replica makes few calls: p99 over calls shows
    how often a call is slow, not how long a stuck session waits."""
    await under_load(svc, 0.3, sessions=sessions)
    out = []
    for _ in range(windows):
        lat = await under_load(svc, seconds, sessions=sessions)
        out.append({"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                    "calls": len(lat)})
    return out
