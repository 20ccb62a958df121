"""The actor API across real processes: adverbs, meshes, ranks, handles, sync and async use."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from actors import Caller, Counter, Overlapping
from forge_core.actor import (
    ActorError, Future, ProcMesh, ValueMesh, current_rank, current_size, spawn_procs, this_host,
    this_proc,
)

pytestmark = pytest.mark.timeout(60)


def test_the_public_names_exist():
    import forge_core.actor as api

    for name in ["Actor", "endpoint", "Future", "ProcMesh", "HostMesh", "ValueMesh", "this_proc",
                 "this_host", "spawn_procs", "spawn_cluster_procs", "current_rank",
                 "current_size", "ActorError", "SupervisionError"]:
        assert hasattr(api, name), name


async def test_adverbs_on_a_four_process_mesh():
    procs = this_host().spawn_procs(per_host={"gpus": 4})
    assert isinstance(procs, ProcMesh) and len(procs) == 4
    counters = procs.spawn("counters", Counter, 0)
    await counters.increment.call()
    assert await counters.get_value.call_one() == 1
    assert await counters.get_value.choose() == 1
    values = await counters.get_value.call()
    assert isinstance(values, ValueMesh)
    assert values == [1, 1, 1, 1] and list(values) == [1, 1, 1, 1] and len(values) == 4
    await counters.increment.broadcast()
    assert await counters.aget_value.call() == [2, 2, 2, 2]  # async endpoint
    streamed = [v async for v in counters.get_value.stream()]
    assert sorted(streamed) == [2, 2, 2, 2]
    pids = await counters.pid.call()
    assert len(set(pids)) == 4
    await procs.stop()


async def test_value_mesh_maps_points_to_values():
    procs = spawn_procs(per_host={"hosts": 2, "gpus": 3})
    assert procs.extent == {"hosts": 2, "gpus": 3} and procs.sizes == procs.extent
    mesh = procs.spawn("c", Counter)
    where = await mesh.where.call()
    for point, (rank, coords, sizes) in where.items():
        assert point.rank == rank and dict(point) == coords
        assert sizes == {"hosts": 2, "gpus": 3}
    assert where[{"hosts": 1, "gpus": 2}][0] == 5  # row-major
    assert [w[0] for w in where] == list(range(6))
    await procs.stop()


async def test_slices_spawn_and_call():
    procs = spawn_procs(per_host={"gpus": 4})
    first_two = procs.slice(gpus=slice(0, 2))
    assert len(first_two) == 2 and first_two.extent == {"gpus": 2}
    mesh = first_two.spawn("c", Counter, 5)
    assert await mesh.get_value.call() == [5, 5]
    everywhere = procs.spawn("d", Counter, 1)
    one = everywhere.slice(gpus=3)
    await one.increment.call()
    assert await everywhere.get_value.call() == [1, 1, 1, 2]
    assert (await everywhere.slice(gpus=slice(2, 4)).where.call())[0][0] == 2
    await procs.stop()


async def test_local_actor_in_this_process():
    counter = this_proc().spawn("counter", Counter, initial_value=0)
    await counter.increment.call_one()
    assert await counter.get_value.call_one() == 1
    assert await counter.get_value.call() == [1]


async def test_arguments_are_copied_even_in_process():
    counter = this_proc().spawn("counter", Counter)
    item = [1, 2]
    await counter.append.call_one(item)
    item.append(3)
    assert await counter.get_log.call_one() == [[1, 2]]
    log = await counter.get_log.call_one()
    log.append("mutated")
    assert await counter.get_log.call_one() == [[1, 2]]


def test_sync_code_spawns_and_gets():
    procs = spawn_procs(per_host={"procs": 2})
    counters = procs.spawn("c", Counter, 3)
    fut = counters.get_value.call()
    assert isinstance(fut, Future)
    assert fut.get(timeout=30) == [3, 3]
    counters.increment.broadcast().get(timeout=10)
    assert counters.get_value.call_one().get(timeout=10) == 4
    local = this_proc().spawn("l", Counter, 9)
    assert local.get_value.call_one().get(timeout=10) == 9
    procs.stop().get(timeout=10)


async def test_future_get_inside_the_loop_says_to_await():
    counter = this_proc().spawn("counter", Counter)
    fut = counter.get_value.call_one()
    with pytest.raises(RuntimeError, match="await"):
        fut.get()
    assert await fut == 0


async def test_call_futures_work_with_asyncio_helpers():
    """The futures of calls made on a loop are not asyncio.Future subclasses (a task awaits
    those more slowly) but asyncio's helpers take them as futures all the same."""
    procs = spawn_procs(per_host={"procs": 2})
    counters = procs.spawn("counters", Counter, 5)
    fut = counters.get_value.call_one()
    assert asyncio.isfuture(fut) and isinstance(fut, Future)
    seen: list = []
    dropped: list = []
    fut.add_done_callback(seen.append)
    fut.add_done_callback(dropped.append)
    assert fut.remove_done_callback(dropped.append) == 1
    assert await fut == 5
    assert fut.done() and fut.result() == 5 and fut.exception() is None
    await asyncio.sleep(0)
    assert seen == [fut] and dropped == []  # callbacks get the future they were added to
    both = await asyncio.gather(counters.get_value.call_one(), counters.get_value.call())
    assert both == [5, [5, 5]]
    assert await asyncio.wait_for(counters.get_value.call_one(), 10) == 5
    assert await asyncio.shield(counters.get_value.call_one()) == 5
    pending = [counters.get_value.call_one(), counters.aget_value.call_one()]
    done, _ = await asyncio.wait(pending)
    assert done == set(pending)
    assert [await f for f in asyncio.as_completed(pending)] == [5, 5]
    cancelled = counters.aget_value.call_one()
    assert cancelled.cancel() and cancelled.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await counters.get_value.call_one() == 5  # its late reply harmed nothing
    with pytest.raises(asyncio.TimeoutError):  # gather cancels its children on the timeout
        await asyncio.wait_for(asyncio.gather(counters.asleep.call_one(30)), 0.2)
    cancelled = counters.asleep.call_one(30)
    cancelled.cancel("no longer needed")
    (outcome,) = await asyncio.gather(cancelled, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    fut = counters.get_value.call_one()
    assert await asyncio.to_thread(fut.get, 10) == 5  # get() from another thread
    await procs.stop()


async def test_handles_travel_to_other_actors():
    procs = spawn_procs(per_host={"procs": 3})
    counters = procs.slice(procs=slice(0, 2)).spawn("counters", Counter, 10)
    caller = procs.slice(procs=2).spawn("caller", Caller)
    # passed before the counters are known to be up: the call waits for them
    assert await caller.total.call_one(counters) == 20
    restored = pickle.loads(pickle.dumps(counters))
    assert await restored.get_value.call() == [10, 10]
    await procs.stop()


async def test_current_rank_outside_an_actor_is_rank_zero():
    assert current_rank().rank == 0 and current_size() == {}


async def test_actors_sharing_a_process_each_see_their_own_rank():
    # Calls to both reach process 1 over one connection, alternately: each actor must see
    # its own point, and code outside actors none.
    procs = spawn_procs(per_host={"procs": 2})
    wide = procs.spawn("wide", Counter)  # rank 1 of 2 in process 1
    alone = procs.slice(procs=1).spawn("alone", Counter)  # the only one of its mesh there
    second = wide.slice(procs=1)
    for _ in range(3):
        assert await second.where.call_one() == (1, {"procs": 1}, {"procs": 2})
        assert await alone.where.call_one() == (0, {}, {})  # slice(procs=1) drops the dim
    assert current_rank().rank == 0 and current_size() == {}
    await procs.stop()


async def test_async_context_manager_stops_the_mesh():
    async with spawn_procs(per_host={"procs": 2}) as procs:
        mesh = procs.spawn("c", Counter)
        pids = await mesh.pid.call()
    import os
    import time

    deadline = time.time() + 5
    while time.time() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            break
        await asyncio.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


async def test_spawned_processes_import_no_torch():
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("c", Counter)
    modules = await mesh.modules.call_one()
    assert "torch" not in modules and "numpy" not in modules
    assert "uvloop" in modules
    await procs.stop()


async def test_one_message_at_a_time_unless_concurrent():
    procs = spawn_procs(per_host={"procs": 1})
    actor = procs.spawn("o", Overlapping)
    peaks = await asyncio.gather(*(actor.serial.call_one(0.05) for _ in range(4)))
    assert max(peaks) == 1
    await actor.reset.call_one()
    peaks = await asyncio.gather(*(actor.overlapping.call_one(0.1) for _ in range(4)))
    assert max(peaks) == 4
    await procs.stop()


async def test_fifo_per_sender_including_broadcast():
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter)
    sends = []
    for i in range(300):
        if i % 3 == 0:
            sends.append(mesh.append.broadcast(i))
        elif i % 3 == 1:
            sends.append(mesh.aappend.call(i))
        else:
            sends.append(mesh.append.call(i))
    for s in sends:
        await s
    assert await mesh.get_log.call() == [list(range(300))] * 2
    await procs.stop()


async def test_tensors_and_arrays_round_trip():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("c", Counter)
    t = torch.arange(1 << 16, dtype=torch.float32).reshape(256, 256)
    back = await mesh.echo.call_one(t)
    assert torch.equal(back, t) and back.dtype == torch.float32
    a = np.arange(100000, dtype=np.int64)
    assert np.array_equal(await mesh.echo.call_one(a), a)
    big = bytes(range(256)) * 1024
    assert await mesh.echo.call_one(big) == big
    empty = torch.empty(0, 3)
    assert (await mesh.echo.call_one(empty)).shape == (0, 3)
    bf = torch.ones(4, 4, dtype=torch.bfloat16, requires_grad=True)
    back = await mesh.echo.call_one(bf)
    assert back.dtype == torch.bfloat16 and back.requires_grad and torch.equal(back, bf)
    await procs.stop()
