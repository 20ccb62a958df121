"""Errors, dead processes and bad input: each fails clearly, fast, and harms nothing else."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors import BadInit, Counter
from forge_core.actor import ActorError, SupervisionError, spawn_procs, this_proc

pytestmark = pytest.mark.timeout(60)

ADVERBS = ["call_one", "choose", "call"]


@pytest.mark.parametrize("adverb", ADVERBS)
async def test_endpoint_error_reaches_caller_and_actor_lives_on(adverb):
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter, 1)
    with pytest.raises(ActorError) as info:
        await getattr(mesh.boom, adverb)("kaput")
    assert isinstance(info.value.exception, ValueError)
    assert str(info.value.exception) == "kaput"
    assert "Remote traceback" in str(info.value) and "def boom" in str(info.value) or "boom" in str(info.value)
    await mesh.boom.broadcast("ignored")
    assert await mesh.get_value.call() == [1, 1]
    await procs.stop()


async def test_stream_raises_endpoint_errors():
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter)
    with pytest.raises(ActorError):
        async for _ in mesh.boom.stream():
            pass
    await procs.stop()


@pytest.mark.parametrize("how", ["kill", "exit", "segfault"])
@pytest.mark.parametrize("adverb", ADVERBS)
async def test_dead_process_fails_waiting_calls_fast(how, adverb):
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter)
    await mesh.get_value.call()
    one = mesh.slice(procs=0)
    waiting = asyncio.ensure_future(_await(one.asleep.call_one(30)))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await one.adie.broadcast(how)
    with pytest.raises(SupervisionError):
        await waiting
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    with pytest.raises(SupervisionError):
        await getattr(one.get_value, adverb)()
    assert time.monotonic() - start < 0.5
    # the other process still serves
    assert await mesh.slice(procs=1).get_value.call_one() == 0
    await asyncio.wait_for(_await(procs.stop()), 6)
    fresh = spawn_procs(per_host={"procs": 1})
    assert await fresh.spawn("c", Counter, 7).get_value.call_one() == 7
    await fresh.stop()


async def test_choose_skips_a_dead_process():
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter)
    await mesh.slice(procs=0).die.broadcast("kill")
    await asyncio.sleep(0.3)
    for _ in range(4):
        assert await mesh.get_value.choose() == 0
    await procs.stop()


async def _await(future):
    return await future


async def test_init_error_reaches_the_first_call():
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("bad", BadInit)
    with pytest.raises(ActorError, match="BadInit failed to start.*cannot start"):
        await mesh.ping.call()
    with pytest.raises(ActorError):
        await mesh.ping.call_one()
    await procs.stop()


async def test_missing_and_non_endpoints_name_the_class_and_its_endpoints():
    mesh = this_proc().spawn("c", Counter)
    with pytest.raises(AttributeError, match=r"Counter has no endpoint 'nope'.*get_value"):
        mesh.nope
    with pytest.raises(AttributeError, match=r"not_an_endpoint.*increment"):
        mesh.not_an_endpoint
    with pytest.raises(TypeError, match="call_one"):
        mesh.get_value()


async def test_wrong_arguments_fail_before_sending():
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("c", Counter)
    with pytest.raises(TypeError, match="Counter.increment"):
        mesh.increment.call_one(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        mesh.increment.call(nope=1)
    with pytest.raises(TypeError):
        procs.spawn("c2", Counter, 1, 2, 3)
    assert await mesh.get_value.call_one() == 0
    await procs.stop()


async def test_unpicklable_argument_is_named_at_the_caller():
    import threading

    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("c", Counter)
    with pytest.raises(TypeError, match="argument 'item' of Counter.append cannot be pickled"):
        mesh.append.call_one(threading.Lock())
    with pytest.raises(ActorError, match="could not be pickled"):
        await mesh.unpicklable_result.call_one()
    assert await mesh.get_value.call_one() == 0
    await procs.stop()


async def test_recursive_structures_travel():
    mesh = this_proc().spawn("c", Counter)
    loop_list: list = [1]
    loop_list.append(loop_list)
    back = await mesh.echo.call_one(loop_list)
    assert back[1] is back


async def test_stop_works_after_a_death_and_within_five_seconds():
    procs = spawn_procs(per_host={"procs": 3})
    mesh = procs.spawn("c", Counter)
    await mesh.get_value.call()
    await mesh.slice(procs=1).die.broadcast("kill")
    start = time.monotonic()
    await procs.stop()
    assert time.monotonic() - start < 5


async def test_initialized_raises_a_constructor_error():
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("bad", BadInit)
    with pytest.raises(ActorError, match="cannot start"):
        await asyncio.wait_for(_await(mesh.initialized), 30)
    await procs.stop()
