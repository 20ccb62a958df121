"""Weight sync between real processes: a trainer actor publishes, two policy actors load, while
generation calls keep running on the policies. Every replica must equal the trainer bit for bit
after every version, and no generation may see its weights change under it."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import torch

from forge_core.actor import ActorError, spawn_procs
from weight_actors import Policy, Trainer

pytestmark = pytest.mark.timeout(90)

# Control messages go over TCP here: the weights under test move by the backend's own path.
ENV = {"FORGE_TRANSPORT": "tcp"}


async def generate_until(stop: asyncio.Event, policies, results: list) -> None:
    while not stop.is_set():
        results.extend(await policies.generate.call(2))


async def check_versions(trainer, policies, versions) -> list:
    stop, generations = asyncio.Event(), []
    generating = asyncio.ensure_future(generate_until(stop, policies, generations))
    try:
        for version in versions:
            handle = await trainer.step_and_publish.call_one(version)
            assert list(await policies.update_weights.call(handle)) == [True, True]
            expected = await trainer.weights.call_one()
            for replica in await policies.weights.call():
                assert list(replica) == list(expected)
                for name, tensor in expected.items():
                    assert torch.equal(replica[name], tensor), (version, name)
            await asyncio.sleep(0.02)  # let some generations run on this version
    finally:
        stop.set()
        await generating
    assert generations and all(unchanged for _, unchanged in generations)
    assert {version for version, _ in generations} >= set(versions[:-1])
    return generations


async def test_replicas_equal_the_trainer_version_by_version_under_generation():
    """Over shm and over tcp, on the same three processes (one trainer, two policies each)."""
    procs = spawn_procs({"procs": 3}, env=ENV)
    try:
        for backend in ["shm", "tcp"]:
            trainer = procs.slice(procs=0).spawn(f"trainer-{backend}", Trainer, backend)
            policies = procs.slice(procs=slice(1, 3)).spawn(f"policy-{backend}", Policy)
            await check_versions(trainer, policies, [1, 2, 3, 4])
            old = await trainer.publish.call_one(5)
            await trainer.step_and_publish.call_one(6)
            newest = await trainer.step_and_publish.call_one(7)
            assert list(await policies.update_weights.call(newest)) == [True, True]
            assert list(await policies.update_weights.call(old)) == [False, False]  # a no-op
            with pytest.raises(ActorError, match="not newer than version 7"):
                await trainer.publish.call_one(7)
            if backend == "shm":
                assert await trainer.segments.call_one() == 2  # seven versions, two segments
                assert all(n <= 2 for n in await policies.mappings.call())
            assert await trainer.close.call_one() == 0
    finally:
        await procs.stop()


async def test_auto_falls_back_to_tcp_for_replicas_on_another_host():
    """The policies claim another host: the shm source is unreachable, tcp serves them."""
    trainer_proc = spawn_procs({"procs": 1}, env=ENV)
    policy_procs = spawn_procs({"procs": 2}, env={**ENV, "FORGE_HOST_ID": "elsewhere:0"})
    try:
        trainer = trainer_proc.spawn("trainer", Trainer, "auto")
        policies = policy_procs.spawn("policy", Policy)
        handle = await trainer.step_and_publish.call_one(1)
        assert [name for name, _ in handle.sources] == ["shm", "tcp"]
        assert list(await policies.update_weights.call(handle)) == [True, True]
        assert all(n == 0 for n in await policies.mappings.call())  # nothing mapped: tcp
        expected = await trainer.weights.call_one()
        fetched = await policies.fetch.call_one(handle)
        assert all(torch.equal(fetched[k], v) for k, v in expected.items())
    finally:
        await asyncio.gather(trainer_proc.stop(), policy_procs.stop())


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
async def test_a_trainer_killed_with_sigkill_leaves_nothing_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    procs = spawn_procs({"procs": 2}, env=ENV)
    try:
        trainer = procs.slice(procs=0).spawn("trainer", Trainer, "shm")
        policy = procs.slice(procs=1).spawn("policy", Policy)
        handle = await trainer.step_and_publish.call_one(1)
        assert await policy.update_weights.call_one(handle)
        os.kill(await trainer.pid.call_one(), signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert set(os.listdir("/dev/shm")) == before
        # The replica keeps what it loaded, says that the publisher is gone, and lets go of
        # the segment: the last mapping of the trainer's memory.
        with pytest.raises(ActorError, match="closed or exited"):
            await policy.fetch.call_one(handle)
        assert await policy.mappings.call_one() == 0
    finally:
        await procs.stop()
    assert set(os.listdir("/dev/shm")) == before
