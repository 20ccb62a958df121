"""Routing through a service: route, fanout, sessions, scaling, metrics, and interfaces that
travel to other actors. Real replica processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from forge_core.actor import ActorError, spawn_procs, this_proc
from forge_core.errors import NoReplicaAvailable
from svc_actors import Client, Worker

pytestmark = pytest.mark.timeout(60)

FAST_PROBES = dict(probe_interval=0.1, probe_timeout=2.0)


async def wait_until(predicate, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(step)


def all_healthy(svc, count: int):
    return lambda: [m.state for m in svc.metrics()] == ["healthy"] * count


async def test_route_spreads_calls_and_fanout_reaches_every_replica():
    svc = await Worker.options(num_replicas=3).as_service(tag="rr")
    pids = [await svc.pid.route() for _ in range(9)]
    assert sorted(Counter(pids).values()) == [3, 3, 3]  # round robin by default
    assert sorted(await svc.pid.fanout()) == sorted(set(pids))
    infos = await svc.info.fanout()
    assert [i["replica"] for i in infos] == [0, 1, 2] and {i["tag"] for i in infos} == {"rr"}
    metrics = svc.metrics()
    assert [m.name for m in metrics] == ["Worker.r0", "Worker.r1", "Worker.r2"]
    assert all(m.state == "healthy" and m.in_flight == 0 and m.failed == 0 for m in metrics)
    assert sum(m.completed for m in metrics) == 9 + 3 + 3
    assert all(m.latency_p50_ms > 0 and m.latency_p99_ms >= m.latency_p50_ms for m in metrics)
    await svc.shutdown()
    with pytest.raises(NoReplicaAvailable, match="shut down"):
        await svc.pid.route()


async def test_fanout_raises_or_returns_exceptions_in_place():
    svc = await Worker.options(num_replicas=2).as_service()
    with pytest.raises(ActorError, match="boom on purpose"):
        await svc.boom.fanout()
    results = await svc.boom.fanout(return_exceptions=True)
    assert len(results) == 2 and all(isinstance(r, ActorError) for r in results)
    assert isinstance(results[0].exception, ValueError)
    await svc.shutdown()


async def test_a_user_exception_is_returned_never_retried_and_never_restarts_the_replica():
    svc = await Worker.options(num_replicas=2, **FAST_PROBES).as_service()
    async with svc.session():
        before = await svc.info.route()
        with pytest.raises(ActorError, match="boom on purpose") as info:
            await svc.boom.route()
        assert isinstance(info.value.exception, ValueError)
        await asyncio.sleep(0.5)  # several probe rounds
        after = await svc.info.route()
    assert after["pid"] == before["pid"]
    assert after["calls"] == before["calls"] + 1  # the failing call ran exactly once
    row = svc.metrics()[before["replica"]]
    assert row.state == "healthy" and row.generation == 1 and row.failed == 1
    await svc.shutdown()


async def test_a_session_sticks_to_one_replica_including_tasks_started_inside():
    svc = await Worker.options(num_replicas=3).as_service()
    async with svc.session() as session:
        pids = {await svc.pid.route() for _ in range(6)}
        pids |= set(await asyncio.gather(*(asyncio.create_task(svc.pid.route())
                                           for _ in range(6))))
        assert len(pids) == 1 and session.replica is not None
    outside = {await svc.pid.route() for _ in range(6)}
    assert len(outside) == 3
    async with svc.session("user-42"):  # an explicit id means the same session every time
        first = await svc.pid.route()
    await svc.pid.route()
    async with svc.session("user-42"):
        assert await svc.pid.route() == first
    await svc.shutdown()


async def test_least_loaded_spreads_sessions_started_one_after_another():
    svc = await Worker.options(num_replicas=3, router="least_loaded").as_service()
    homes = []
    for _ in range(6):
        async with svc.session():
            homes.append(await svc.info.route())
    assert [h["replica"] for h in homes] == [0, 1, 2, 0, 1, 2]
    await svc.shutdown()


async def test_a_session_moves_only_when_its_own_replica_dies():
    svc = await Worker.options(num_replicas=3, **FAST_PROBES).as_service()
    async with svc.session() as session:
        home = await svc.info.route()
        others = [p for p in await svc.pid.fanout() if p != home["pid"]]
        os.kill(others[0], signal.SIGKILL)  # another replica dies: the session stays
        await wait_until(lambda: any(m.state != "healthy" for m in svc.metrics()))
        assert await svc.pid.route() == home["pid"]
        await wait_until(all_healthy(svc, 3))
        os.kill(home["pid"], signal.SIGKILL)  # its own replica dies: it moves, once
        moved = await svc.pid.route()
        assert moved != home["pid"] and session.replica != home["replica"]
        await wait_until(all_healthy(svc, 3))  # its old replica is back: it does not return
        assert {await svc.pid.route() for _ in range(5)} == {moved}
    await svc.shutdown()


async def test_scale_grows_and_shrinks_the_replica_set_live():
    svc = await Worker.options(num_replicas=1).as_service(tag="s")
    await svc.scale(3)
    infos = await svc.info.fanout()
    assert [i["replica"] for i in infos] == [0, 1, 2]
    assert all(i["setup_runs"] == 1 and i["tag"] == "s" for i in infos)
    calls = [asyncio.create_task(svc.work.route(0.3)) for _ in range(30)]
    await asyncio.sleep(0.05)
    await svc.scale(1)  # two replicas go while calls are in flight on them
    assert len(await asyncio.gather(*calls)) == 30
    assert [m.index for m in svc.metrics()] == [0]
    assert await svc.pid.fanout() == [infos[0]["pid"]]
    with pytest.raises(ValueError):
        await svc.scale(0)
    await svc.shutdown()


async def test_an_interface_travels_to_another_actor_and_follows_the_health_view():
    svc = await Worker.options(num_replicas=2, **FAST_PROBES).as_service()
    procs = spawn_procs(per_host={"procs": 1})
    client = procs.spawn("client", Client)
    pids = set(await svc.pid.fanout())
    assert set(await client.route_pids.call_one(svc, 4)) == pids  # same policy: round robin
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: set(p.generation for p in svc.metrics()) == {1, 2}
                     and all_healthy(svc, 2)())
    seen = set(await client.route_pids.call_one(svc, 6))
    assert victim not in seen and len(seen) == 2  # the replacement, learned from the controller
    assert await client.healthy_count.call_one(svc) == 2
    await procs.stop()
    await svc.shutdown()


async def test_route_goes_straight_to_the_replica_not_through_the_controller():
    svc = await Worker.options(num_replicas=2).as_service()
    await svc.pid.route()
    # The controller runs on this process's home loop; block that loop for a second.
    blocker = this_proc().spawn("blocker", Worker)
    await blocker.pid.call_one()
    blocked = blocker.hang.call_one(1.0)
    await asyncio.sleep(0.05)
    start = time.monotonic()
    pids = [await svc.pid.route() for _ in range(10)]
    assert time.monotonic() - start < 0.5 and len(set(pids)) == 2
    await blocked
    await svc.shutdown()
