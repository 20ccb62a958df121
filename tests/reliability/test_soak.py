"""A bounded soak: a 3-replica service under steady mixed load (sync and async endpoints, calls
in and out of sessions) with a replica killed every few seconds. No call may fail, and nothing
may pile up: child processes, file descriptors, threads. The p99 latency is printed.

``FORGE_SOAK_SECONDS`` sets the length: 120 by default, as in CI, so that the suite keeps room
for the RL tests; the README's figures are from a 300-second run; 30 is enough to try it.
"""

from __future__ import annotations

import itertools
import os
import time

import pytest

import chaos
from rel_actors import Replica

SOAK_SECONDS = float(os.environ.get("FORGE_SOAK_SECONDS", "120"))
KILL_EVERY = (5.0, 15.0)
IN_FLIGHT = 16
SESSIONS = 7


def _resources() -> dict[str, int]:
    return {"fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task")), "children": chaos.live_procs()}


def mixed_load(svc):
    """Calls in turn: a sync endpoint, an async one, and an async one inside a session."""
    turn = itertools.count()

    async def call():
        n = next(turn)
        if n % 3 == 0:
            return await svc.quick.route()
        if n % 3 == 1:
            return await svc.work.route(0.02)
        async with svc.session(f"session-{n % SESSIONS}"):  # moves only if its replica dies
            return await svc.work.route(0.01)

    return call


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_soak_under_periodic_kills_loses_nothing_and_leaks_nothing():
    options = dict(num_replicas=3, probe_interval=1.0, probe_timeout=5.0)
    warm = await Replica.options(**options).as_service()  # thread pools, caches, listeners
    await warm.quick.route()
    await warm.shutdown()
    await chaos.wait_until(lambda: chaos.live_procs() == 0, 10, "the warm-up replicas to end")
    before = _resources()

    seed = int(os.environ.get("FORGE_CHAOS_SEED", str(time.time_ns() % 10**6)))
    svc = await Replica.options(**options).as_service()
    tally = await chaos.run(svc, mixed_load(svc), SOAK_SECONDS, IN_FLIGHT, KILL_EVERY, seed)
    print(f"\nsoak (seed {seed}) {tally.summary(SOAK_SECONDS)}")
    assert tally.lost == []
    assert tally.kills >= SOAK_SECONDS // 20
    await svc.shutdown()

    await chaos.wait_until(lambda: chaos.live_procs() == 0, 10, "every replica process to end")
    after = _resources()
    print(f"resources before {before}, after {after}")
    # Each kill and restart opened and closed connections; none may stay behind.
    assert after["fds"] <= before["fds"]
    assert after["threads"] <= before["threads"]
