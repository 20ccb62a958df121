"""Rollouts: loops that keep the policy busy and the replay buffer full.

A ``RolloutSchedule`` hands out chunks of prompts, each meant for one training step, and holds
back the chunks of step ``s`` until the policy replicas serve weights of version
``s - max_policy_age`` or newer: the policy never runs further ahead of the trainer than the
staleness bound allows, so nothing it generates is wasted. ``RolloutLoop``s (as many as you
like, in the loop's process) take chunks, route them to the policy service, score them on the
reward service and add the scored groups to the buffer, until the schedule closes.

Chunk ``i`` of a run always has the same prompts and the same sampling seed, whichever loop and
replica serve it: a run is reproducible, and with ``max_policy_age=0`` it is exactly the
synchronous loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from forge_core.errors import ActorError

from .types import Prompt, ScoredGroup

log = logging.getLogger("forge_rl.rollout")

PROMPTS_PER_CHUNK_LIMIT = 1 << 20  # a group's index is chunk * this + its place in the chunk


class RolloutsFailing(RuntimeError):
    """Every recent rollout failed: the policy or reward service is broken, not unlucky."""


@dataclass(frozen=True)
class Chunk:
    index: int  # its place in the run: seeds its prompts and its sampling
    step: int  # the training step it is meant for
    prompts: tuple[Prompt, ...]
    seed: int

    def group_index(self, position: int) -> int:
        return self.index * PROMPTS_PER_CHUNK_LIMIT + position


def chunk_seed(run_seed: int, index: int) -> int:
    return random.Random(f"{run_seed}:sampling:{index}").getrandbits(31)


def make_chunk(prompt_source: Callable[[int], list[Prompt]], run_seed: int, index: int,
               step: int) -> Chunk:
    prompts = tuple(prompt_source(index))
    if not prompts or len(prompts) >= PROMPTS_PER_CHUNK_LIMIT:
        raise ValueError(f"prompt_source({index}) gave {len(prompts)} prompts; give 1 to "
                         f"{PROMPTS_PER_CHUNK_LIMIT - 1}")
    return Chunk(index, step, prompts, chunk_seed(run_seed, index))


class RolloutSchedule:
    """Hands out chunks under the staleness bound; tells the trainer when a step's data is in.

    Step ``s`` needs ``chunks_per_step`` chunks that made it into the buffer; a chunk whose
    rollout failed is replaced by a new one (new prompts), so a failure costs time, never a
    hang. After ``max_consecutive_failures`` failures in a row the schedule gives up and
    ``wait_step`` raises ``RolloutsFailing``.
    """

    def __init__(self, prompt_source: Callable[[int], list[Prompt]], chunks_per_step: int,
                 max_policy_age: int, seed: int = 0, max_consecutive_failures: int = 20,
                 first_index: int = 0):
        if chunks_per_step < 1:
            raise ValueError("chunks_per_step must be >= 1")
        self.prompt_source = prompt_source
        self.chunks_per_step = chunks_per_step
        self.max_policy_age = max_policy_age
        self.seed = seed
        self.max_consecutive_failures = max_consecutive_failures
        self.live_version = 0  # every healthy replica serves this version or newer
        self.first_index = first_index  # a resumed run's chunks go on from its checkpoint's
        self.next_index = first_index
        self.launched: dict[int, int] = {}  # step -> chunks out or in (failed ones not counted)
        self.succeeded: dict[int, int] = {}
        self.groups: dict[int, int] = {}  # step -> scored groups added to the buffer
        self.samples: dict[int, int] = {}  # step -> completions in them
        self.correct: dict[int, float] = {}  # step -> completions exactly right
        self.failures = 0
        self.consecutive_failures = 0
        self.error: BaseException | None = None
        self.closed = False
        self._changed = asyncio.Condition()

    # -- rollout side --

    async def next_chunk(self) -> Chunk | None:
        """The next chunk the bound allows (waiting for new weights if need be); None once the
        schedule is closed."""
        async with self._changed:
            while True:
                if self.closed:
                    return None
                step = self._open_step()
                if step is not None:
                    self.launched[step] = self.launched.get(step, 0) + 1
                    index, self.next_index = self.next_index, self.next_index + 1
                    return make_chunk(self.prompt_source, self.seed, index, step)
                await self._changed.wait()

    def _open_step(self) -> int | None:
        step = 0
        while self.launched.get(step, 0) >= self.chunks_per_step:
            step += 1
        return step if step <= self.live_version + self.max_policy_age else None

    async def finished(self, chunk: Chunk, groups: list[ScoredGroup] | None,
                       success: float = 0.0, error: BaseException | None = None) -> None:
        """Report a chunk's outcome: its groups (now in the buffer), or None if it failed."""
        async with self._changed:
            if groups is None:
                self.launched[chunk.step] -= 1  # its slot is open again
                self.failures += 1
                self.consecutive_failures += 1
                if self.consecutive_failures >= self.max_consecutive_failures:
                    self.error = RolloutsFailing(
                        f"the last {self.consecutive_failures} rollouts all failed; the last "
                        f"error: {error!r}")
                    self.closed = True
            else:
                self.consecutive_failures = 0
                step = chunk.step
                self.succeeded[step] = self.succeeded.get(step, 0) + 1
                self.groups[step] = self.groups.get(step, 0) + len(groups)
                samples = sum(g.num_samples for g in groups)
                self.samples[step] = self.samples.get(step, 0) + samples
                self.correct[step] = self.correct.get(step, 0.0) + success * samples
            self._changed.notify_all()

    # -- trainer side --

    async def publish(self, version: int) -> None:
        """Every healthy replica now serves ``version`` or newer: open the steps it allows."""
        async with self._changed:
            self.live_version = max(self.live_version, version)
            self._changed.notify_all()

    async def wait_step(self, step: int) -> int:
        """Wait until every chunk of ``step`` is in the buffer; returns its number of groups."""
        async with self._changed:
            while self.succeeded.get(step, 0) < self.chunks_per_step:
                if self.error is not None:
                    raise self.error
                if self.closed:
                    raise RuntimeError("the rollout schedule was closed")
                await self._changed.wait()
            return self.groups[step]

    def success(self, step: int) -> float:
        return self.correct.get(step, 0.0) / max(self.samples.get(step, 0), 1)

    async def close(self) -> None:
        """Stop handing out chunks: every ``RolloutLoop`` ends after its current chunk."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()


class RolloutLoop:
    """Routes chunks to the policy service, scores them, adds them to the buffer; again.

    ``run()`` returns when the schedule closes. A chunk whose policy or reward call fails
    (``ActorError`` from the endpoint, or no replica reachable) is counted in ``failed`` and
    skipped; the loop goes on.
    """

    def __init__(self, policy: Any, reward: Any, buffer: Any, schedule: RolloutSchedule, *,
                 group_size: int, max_tokens: int, temperature: float = 1.0,
                 name: str = "rollout", retry_pause: float = 0.2):
        self.policy, self.reward, self.buffer = policy, reward, buffer
        self.schedule = schedule
        self.group_size, self.max_tokens, self.temperature = group_size, max_tokens, temperature
        self.name = name
        self.retry_pause = retry_pause
        self.completed = 0
        self.failed = 0
        self.busy_seconds = 0.0

    async def run(self) -> None:
        while (chunk := await self.schedule.next_chunk()) is not None:
            started = time.perf_counter()
            try:
                groups, success = await self.rollout(chunk)
            except asyncio.CancelledError:
                await self.schedule.finished(chunk, None)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a rollout is counted, skipped
                self.failed += 1
                kind = "policy or reward endpoint raised" if isinstance(exc, ActorError) \
                    else "rollout failed"
                log.warning("%s: chunk %d skipped (%s: %s)", self.name, chunk.index, kind,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                await self.schedule.finished(chunk, None, error=exc)
                await asyncio.sleep(self.retry_pause)
                continue
            self.busy_seconds += time.perf_counter() - started
            self.completed += 1
            await self.schedule.finished(chunk, groups, success)

    async def rollout(self, chunk: Chunk) -> tuple[list[ScoredGroup], float]:
        """One chunk: generate, score, add to the buffer. Returns the groups and the fraction of
        completions exactly right."""
        version, completions = await self.policy.generate.route(
            [p.text for p in chunk.prompts], self.group_size, self.max_tokens,
            self.temperature, chunk.seed)
        rewards, success = await self.reward.score.route(list(chunk.prompts), completions)
        groups = [ScoredGroup(chunk.group_index(i), prompt, group, group_rewards, version)
                  for i, (prompt, group, group_rewards)
                  in enumerate(zip(chunk.prompts, completions, rewards))]
        await self.buffer.add.call_one(groups)
        return groups, success
