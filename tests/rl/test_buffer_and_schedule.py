"""The replay buffer's staleness bound and the rollout schedule's flow control."""

from __future__ import annotations

import asyncio

import pytest

from forge_core.actor import this_proc
from forge_core.errors import ActorError
from forge_rl.buffer import ReplayBuffer
from forge_rl.rollout import RolloutsFailing, RolloutSchedule
from forge_rl.types import Completion, Prompt, ScoredGroup


def group(index: int, version: int) -> ScoredGroup:
    completion = Completion("1+1=", [1], "2", [5, 2], [-0.1, -0.2])
    return ScoredGroup(index, Prompt("1+1="), [completion], [1.0], version)


def spawn_buffer(**kwargs):
    return this_proc().spawn("buffer", ReplayBuffer, **kwargs)


async def test_sample_hands_out_the_oldest_fresh_groups_and_drops_stale_ones():
    buffer = spawn_buffer(max_policy_age=1)
    # Arrival order differs from run order: the batch comes out in run order.
    await buffer.add.call_one([group(5, 3), group(1, 1), group(3, 2), group(2, 3), group(4, 3)])
    batch = await buffer.sample.call_one(2, 3)  # versions 2 and 3 are fresh for trainer 3
    assert [g.index for g in batch] == [2, 3]
    stats = await buffer.stats.call_one()
    assert stats["dropped_stale"] == 1 and stats["size"] == 2  # group 1 (version 1) is gone
    batch = await buffer.sample.call_one(10, 4)  # only version-3 groups are fresh for 4
    assert [g.index for g in batch] == [4, 5]
    assert await buffer.sample.call_one(10, 9) == []
    records = await buffer.records.call_one()
    assert [(r.current_version, r.policy_versions) for r in records] == [
        (3, (3, 2)), (4, (3, 3)), (9, ())]
    assert max(r.max_age for r in records) <= 1


async def test_age_zero_keeps_only_the_current_version_and_capacity_drops_the_oldest():
    buffer = spawn_buffer(max_policy_age=0, capacity=3)
    await buffer.add.call_one([group(i, 7) for i in range(5)])
    stats = await buffer.stats.call_one()
    assert stats["dropped_full"] == 2 and stats["size"] == 3
    assert [g.index for g in await buffer.sample.call_one(5, 8)] == []
    assert (await buffer.stats.call_one())["dropped_stale"] == 3


async def test_bad_input_is_named():
    buffer = spawn_buffer()
    with pytest.raises(ActorError, match="ScoredGroup items, not dict"):
        await buffer.add.call_one([{"index": 0}])
    with pytest.raises(ActorError, match="max_policy_age must be >= 0"):
        await spawn_buffer(max_policy_age=-1).stats.call_one()


def prompts(index: int) -> list[Prompt]:
    return [Prompt(f"{index}+{k}=") for k in range(2)]


async def test_schedule_holds_back_chunks_beyond_the_staleness_bound():
    schedule = RolloutSchedule(prompts, chunks_per_step=2, max_policy_age=1)
    chunks = [await schedule.next_chunk() for _ in range(4)]  # steps 0 and 1 open at version 0
    assert [(c.index, c.step) for c in chunks] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert chunks[0].prompts == tuple(prompts(0)) and chunks[0].seed != chunks[1].seed
    blocked = asyncio.ensure_future(schedule.next_chunk())
    await asyncio.sleep(0.05)
    assert not blocked.done()  # step 2 needs version 1 live
    await schedule.publish(1)
    assert (await asyncio.wait_for(blocked, 1)).step == 2
    await schedule.close()
    assert await schedule.next_chunk() is None


async def test_a_failed_chunk_is_replaced_and_the_step_completes():
    schedule = RolloutSchedule(prompts, chunks_per_step=2, max_policy_age=0)
    first, second = await schedule.next_chunk(), await schedule.next_chunk()
    await schedule.finished(first, None, error=ValueError("boom"))
    replacement = await schedule.next_chunk()
    assert replacement.step == 0 and replacement.index == 2
    await schedule.finished(second, [group(1, 0)], success=1.0)
    await schedule.finished(replacement, [group(4, 0), group(5, 0)], success=0.5)
    assert await asyncio.wait_for(schedule.wait_step(0), 1) == 3
    assert schedule.failures == 1 and schedule.success(0) == pytest.approx(2 / 3)


async def test_a_schedule_whose_rollouts_all_fail_ends_the_wait_with_the_error():
    schedule = RolloutSchedule(prompts, chunks_per_step=1, max_policy_age=0,
                               max_consecutive_failures=3)
    for _ in range(3):
        await schedule.finished(await schedule.next_chunk(), None, error=ValueError("broken"))
    with pytest.raises(RolloutsFailing, match="last 3 rollouts all failed.*broken"):
        await asyncio.wait_for(schedule.wait_step(0), 1)
    assert await schedule.next_chunk() is None


def test_the_rl_layer_uses_only_the_kernels_public_api():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    private = re.compile(r"^\s*(from|import)\s+forge_core(\.\w+)*\._\w+", re.M)
    offenders = [str(p.relative_to(root)) for p in (root / "forge_rl").rglob("*.py")
                 if private.search(p.read_text())]
    assert offenders == []
    kernel_uses_rl = [str(p.relative_to(root)) for p in (root / "forge_core").rglob("*.py")
                      if re.search(r"^\s*(from|import)\s+forge_rl", p.read_text(), re.M)]
    assert kernel_uses_rl == []
