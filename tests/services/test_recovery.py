"""Health and recovery with real processes: deaths, hangs, retries, crash loops, no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from forge_core.actor import SupervisionError
from forge_core.errors import NoReplicaAvailable
from forge_core.service._controller import STABLE_AFTER
from svc_actors import Worker

pytestmark = pytest.mark.timeout(60)

FAST_PROBES = dict(probe_interval=0.1, probe_timeout=0.5)


async def wait_until(predicate, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(step)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_kill_9_of_one_of_three_replicas_with_60_calls_in_flight_loses_none():
    svc = await Worker.options(num_replicas=3, **FAST_PROBES).as_service(tag="same-args")
    first = await svc.info.fanout()
    calls = [asyncio.create_task(svc.work.route(0.4)) for _ in range(60)]
    await asyncio.sleep(0.1)
    victim = first[1]
    os.kill(victim["pid"], signal.SIGKILL)
    results = await asyncio.gather(*calls)
    assert len(results) == 60 and all(isinstance(r, int) for r in results)
    # Marked unhealthy at once, restarted with the same arguments and setup, same name.
    await wait_until(lambda: [m.state for m in svc.metrics()] == ["healthy"] * 3)
    again = await svc.info.fanout()
    assert again[1]["pid"] != victim["pid"] and not alive(victim["pid"])
    assert again[1]["tag"] == "same-args" and again[1]["setup_runs"] == 1
    assert [m.name for m in svc.metrics()] == ["Worker.r0", "Worker.r1", "Worker.r2"]
    assert [m.generation for m in svc.metrics()] == [1, 2, 1]
    assert svc.metrics()[1].failed >= 1  # the calls that met the death (then retried)
    pids = [i["pid"] for i in again]
    await svc.shutdown()
    assert not any(alive(p) for p in pids)


async def test_a_call_whose_replica_dies_is_retried_unless_the_endpoint_opts_out():
    svc = await Worker.options(num_replicas=2, **FAST_PROBES).as_service()
    async with svc.session() as session:
        home = await svc.pid.route()
        safe = asyncio.create_task(svc.work.route(1.0))
        once = asyncio.create_task(svc.work_once.route(1.0))
        await asyncio.sleep(0.2)
        os.kill(home, signal.SIGKILL)
        survivor = await safe
        assert survivor != home  # retried once, on the other replica, and the session moved
        with pytest.raises(SupervisionError):
            await once  # retry=False: the caller decides
        assert session.replica is not None
    await svc.shutdown()


async def test_a_hung_replica_fails_its_probes_and_is_replaced():
    svc = await Worker.options(num_replicas=2, **FAST_PROBES).as_service()
    async with svc.session():
        stuck = await svc.pid.route()
        hang = asyncio.create_task(svc.hang.route(30))  # blocks that replica's event loop
        start = time.monotonic()
        await wait_until(lambda: svc.metrics()[0].state != "healthy"
                         or svc.metrics()[1].state != "healthy", timeout=5)
        detected = time.monotonic() - start
    assert detected < 2.0  # probe_timeout 0.5 s plus a probe interval, with room for a busy CI
    with pytest.raises(SupervisionError):
        await hang  # killed with its replica; hang is retry=False
    pids = set()
    for _ in range(4):
        pids.add(await svc.pid.route())  # meanwhile calls go to the healthy replica
    assert stuck not in pids
    await wait_until(lambda: [m.state for m in svc.metrics()] == ["healthy"] * 2)
    assert not alive(stuck) and len(set(await svc.pid.fanout())) == 2
    await svc.shutdown()


async def test_a_replica_that_keeps_dying_at_start_backs_off_then_reports_its_error(tmp_path):
    svc = await Worker.options(num_replicas=1, max_restarts=1, restart_backoff=0.1,
                               retry_wait=0.5, **FAST_PROBES).as_service(
        marker_dir=str(tmp_path))
    first = await svc.pid.route()
    (tmp_path / "crash").write_text("")  # from now on, setup kills its process
    await asyncio.sleep(STABLE_AFTER)  # it served long enough: its death is no failed start
    start = time.monotonic()
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: svc.metrics()[0].state == "failed", timeout=15)
    elapsed = time.monotonic() - start
    starts = [int(line) for line in (tmp_path / "starts").read_text().split()]
    assert len(starts) == 1 + 2  # the first start, then max_restarts + 1 tries: no endless loop
    assert elapsed >= 0.1  # backed off between tries
    row = svc.metrics()[0]
    assert row.name == "Worker.r0" and "restart failed" in row.error
    with pytest.raises(NoReplicaAvailable, match="Worker.r0 failed.*restart failed"):
        await svc.pid.route()
    await asyncio.sleep(0.3)
    assert len((tmp_path / "starts").read_text().split()) == 3  # it stays given up
    assert not any(alive(p) for p in starts)  # every try's process was reaped
    await svc.shutdown()


async def test_a_single_replica_service_waits_for_its_replacement():
    svc = await Worker.options(num_replicas=1, **FAST_PROBES).as_service()
    first = await svc.pid.route()
    os.kill(first, signal.SIGKILL)
    second = await svc.pid.route()  # no other replica: waits (bounded) for the restart
    assert second != first
    await svc.shutdown()


async def test_a_replica_of_several_processes_answers_together_and_is_replaced_whole():
    svc = await Worker.options(procs=2, num_replicas=1, **FAST_PROBES).as_service()
    pids = list(await svc.pid.route())  # every process of the replica answers: a ValueMesh
    assert len(set(pids)) == 2
    os.kill(pids[1], signal.SIGKILL)
    fresh = list(await svc.pid.route())  # waits for the replacement
    assert not set(fresh) & set(pids)
    await wait_until(lambda: not alive(pids[0]))  # its sibling was ended, not leaked
    await svc.shutdown()
