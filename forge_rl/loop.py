"""The RL loop, synchronous or asynchronous, over any policy, reward and trainer actors.

``run_loop`` needs four things that keep small endpoint contracts (see the README):

- a policy service: ``generate(prompts, n, max_tokens, temperature, seed) -> (version,
  groups)`` and ``update_weights(handle) -> version`` (loading through a ``WeightsGate``),
  ``busy() -> (pid, seconds spent generating)``;
- a reward service: ``score(prompts, groups) -> (rewards, fraction exactly right)``;
- a trainer actor: ``train_step(batch) -> {"loss", "version", ...}`` and
  ``push_weights() -> WeightsHandle``;
- a ``ReplayBuffer`` actor and a ``LatestWeights`` actor (``forge_rl.versions``).

``mode="sync"`` is the lock-step loop: generate a step's prompts, score them, train, publish the
weights, wait until every replica loaded them, repeat. ``mode="async"`` runs rollout loops
continuously while the trainer trains on batches from the buffer and publishes after every
step; the schedule keeps every sample within ``max_policy_age`` versions of the trainer.
With ``max_policy_age=0`` the asynchronous loop computes exactly what the synchronous one does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from forge_core.errors import SupervisionError

from .rollout import RolloutLoop, RolloutSchedule, make_chunk
from .types import Prompt, ScoredGroup

MODES = ("sync", "async")


@dataclass
class LoopConfig:
    mode: str = "async"
    steps: int = 50
    chunks_per_step: int = 4  # route() calls per step; prompts per chunk come from the source
    group_size: int = 16  # completions per prompt (GRPO's group)
    max_tokens: int = 2
    temperature: float = 1.0
    max_policy_age: int = 1  # async: samples at most this many versions behind the trainer
    rollout_loops: int = 4  # async: loops routing chunks at once
    seed: int = 0
    # A resumed run starts at this step: it trains steps first_step .. steps - 1, on the
    # prompts and sampling seeds an uninterrupted run would have given those steps.
    first_step: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.max_policy_age < 0:
            raise ValueError(f"max_policy_age must be >= 0, not {self.max_policy_age}")
        for name in ("steps", "chunks_per_step", "group_size", "max_tokens", "rollout_loops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not 0 <= self.first_step < self.steps:
            raise ValueError(f"first_step must be in [0, steps={self.steps}), not "
                             f"{self.first_step}")


@dataclass
class Services:
    policy: Any
    reward: Any
    trainer: Any
    buffer: Any
    registry: Any  # LatestWeights


@dataclass
class StepRecord:
    step: int
    reward: float  # mean reward of the completions the step trained on
    success: float  # fraction of its completions exactly right
    seconds: dict[str, float] = field(default_factory=dict)  # per phase
    policy_age_max: int = 0  # the oldest sample's age, in versions behind the trainer
    samples: int = 0  # completions the step trained on
    loss: float = 0.0
    elapsed: float = 0.0  # seconds from the start of the loop to the end of this step


@dataclass
class RunResult:
    mode: str
    max_policy_age: int
    steps: list[StepRecord]
    seconds: float  # the loop's wall time, start-up of the services excluded
    samples_per_s: float
    dropped_stale: int
    rollout_failures: int
    trainer_idle: float  # fraction of the loop's time the trainer was not training/publishing
    policy_idle: float  # fraction of replica-time spent not generating
    greedy_accuracy: float | None = None
    recovery: str = ""
    sample_records: list = field(default_factory=list)  # the buffer's SampleRecords

    def seconds_to_reward(self, target: float, window: int = 5) -> float | None:
        """When the mean reward of the last ``window`` steps first reached ``target``."""
        rewards = [r.reward for r in self.steps]
        for i in range(len(rewards)):
            if i + 1 >= window and statistics.fmean(rewards[i + 1 - window:i + 1]) >= target:
                return self.steps[i].elapsed
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "max_policy_age": self.max_policy_age,
            "steps": [{"step": r.step, "reward": r.reward, "success": r.success,
                       "seconds": r.seconds, "policy_age_max": r.policy_age_max,
                       "samples": r.samples, "loss": r.loss} for r in self.steps],
            "samples_per_s": self.samples_per_s, "greedy_accuracy": self.greedy_accuracy,
            "dropped_stale": self.dropped_stale, "rollout_failures": self.rollout_failures,
            "seconds": self.seconds, "trainer_idle": self.trainer_idle,
            "policy_idle": self.policy_idle, "recovery": self.recovery,
        }

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class _Loop:
    def __init__(self, config: LoopConfig, services: Services,
                 prompt_source: Callable[[int], list[Prompt]], log: Callable[[str], Any],
                 before_step: Callable[[int], Any] | None, on_step: Callable[[StepRecord], Any] | None):
        self.config, self.services, self.log = config, services, log
        self.before_step, self.on_step = before_step, on_step
        age = config.max_policy_age if config.mode == "async" else 0
        # The schedule counts this run's steps from 0; chunk indices (prompts, seeds) go on
        # from where the checkpoint's run stopped, and records carry the run's step numbers.
        self.first_step = config.first_step
        self.schedule = RolloutSchedule(prompt_source, config.chunks_per_step, age, config.seed,
                                        first_index=config.first_step * config.chunks_per_step)
        self.records: list[StepRecord] = []
        self.version = 0
        self.trainer_busy = 0.0
        self.started = 0.0
        self.loops = [RolloutLoop(services.policy, services.reward, services.buffer,
                                  self.schedule, group_size=config.group_size,
                                  max_tokens=config.max_tokens, temperature=config.temperature,
                                  name=f"rollout{i}")
                      for i in range(config.rollout_loops if config.mode == "async" else 1)]

    async def run(self) -> RunResult:
        busy_before = await self._policy_busy()
        self.started = time.perf_counter()
        if self.config.mode == "sync":
            await self._run_sync()
        else:
            await self._run_async()
        seconds = time.perf_counter() - self.started
        busy_after = await self._policy_busy()
        return self._result(seconds, busy_before, busy_after)

    # -- the synchronous loop --

    async def _run_sync(self) -> None:
        rollout = self.loops[0]
        schedule = self.schedule
        for step in range(self.config.steps - self.first_step):
            await _maybe_await(self.before_step and self.before_step(self.first_step + step))
            times: dict[str, float] = {}
            t = time.perf_counter()
            chunks = [make_chunk(schedule.prompt_source, schedule.seed,
                                 schedule.first_index + step * schedule.chunks_per_step + k,
                                 step)
                      for k in range(schedule.chunks_per_step)]
            outcomes = await asyncio.gather(*(rollout.rollout(c) for c in chunks),
                                            return_exceptions=True)
            groups = 0
            for chunk, outcome in zip(chunks, outcomes):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    rollout.failed += 1
                    self.log(f"step {step + 1}: a rollout failed and was skipped: "
                             f"{str(outcome).splitlines()[0] if str(outcome) else outcome!r}")
                    continue
                groups += len(outcome[0])
                await schedule.finished(chunk, *outcome)
            times["rollout"] = time.perf_counter() - t
            await self._train(step, groups, times)
            t = time.perf_counter()
            handle = await self._push(times)
            await load_weights(self.services.policy, handle)
            times["load"] = time.perf_counter() - t
            self._record_step_end(step)

    # -- the asynchronous loop --

    async def _run_async(self) -> None:
        tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in self.loops]
        loading: asyncio.Task | None = None
        try:
            for step in range(self.config.steps - self.first_step):
                await _maybe_await(self.before_step and self.before_step(self.first_step + step))
                times: dict[str, float] = {}
                t = time.perf_counter()
                groups = await self._wait_step(step, tasks)
                times["wait"] = time.perf_counter() - t
                await self._train(step, groups, times)
                if loading is not None:  # one weight load in flight at a time
                    await loading
                handle = await self._push(times)
                # Replicas load the new weights while the trainer goes on (the WeightsGate
                # holds new generations back only while a replica copies them in).
                loading = asyncio.create_task(self._load(handle))
                self._record_step_end(step)
            if loading is not None:
                await loading
        finally:
            await self.schedule.close()
            if loading is not None and not loading.done():
                loading.cancel()
            # Rollouts end after their current chunk; one stuck past that is cancelled.
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_step(self, step: int, tasks: list[asyncio.Task]) -> int:
        waiting = asyncio.create_task(self.schedule.wait_step(step))
        done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:  # a rollout loop ended: it can only have crashed
            waiting.cancel()
            for task in done:
                task.result()  # raises the loop's error
            raise RuntimeError("a rollout loop ended before the run did")
        return waiting.result()

    async def _load(self, handle: Any) -> None:
        await load_weights(self.services.policy, handle)
        await self.schedule.publish(handle.version)

    # -- shared by both --

    async def _train(self, step: int, groups: int, times: dict[str, float]) -> None:
        t = time.perf_counter()
        current = self.version
        batch: list[ScoredGroup] = await self.services.buffer.sample.call_one(groups, current)
        stats = await self.services.trainer.train_step.call_one(batch)
        times["train"] = time.perf_counter() - t
        self.trainer_busy += times["train"]
        if stats["version"] <= current:
            raise RuntimeError(f"the trainer's train_step must return a newer version than "
                               f"{current} (even for a step with nothing to learn), not "
                               f"{stats['version']}")
        self.version = stats["version"]
        rewards = [r for g in batch for r in g.rewards]
        self.records.append(StepRecord(
            step=self.first_step + step, reward=statistics.fmean(rewards) if rewards else 0.0,
            success=self.schedule.success(step), seconds=times,
            policy_age_max=max((current - g.policy_version for g in batch), default=0),
            samples=len(rewards), loss=float(stats.get("loss", 0.0))))

    async def _push(self, times: dict[str, float]) -> Any:
        t = time.perf_counter()
        handle = await self.services.trainer.push_weights.call_one()
        await self.services.registry.publish.call_one(handle)
        times["publish"] = time.perf_counter() - t
        self.trainer_busy += times["publish"]
        return handle

    def _record_step_end(self, step: int) -> None:
        record = self.records[-1]
        record.elapsed = time.perf_counter() - self.started
        if self.on_step is not None:
            self.on_step(record)

    async def _policy_busy(self) -> dict[int, float]:
        try:
            answers = await self.services.policy.busy.fanout(return_exceptions=True)
        except Exception:  # noqa: BLE001 - an idle figure is not worth failing a run for
            return {}
        return dict(a for a in answers if not isinstance(a, BaseException))

    def _result(self, seconds: float, before: dict[int, float], after: dict[int, float]
                ) -> RunResult:
        samples = sum(r.samples for r in self.records)
        replicas = max(len(after), 1)
        busy = sum(max(0.0, b - before.get(pid, 0.0)) for pid, b in after.items())
        return RunResult(
            mode=self.config.mode, max_policy_age=self.schedule.max_policy_age,
            steps=self.records, seconds=seconds, samples_per_s=samples / max(seconds, 1e-9),
            dropped_stale=0, rollout_failures=sum(loop.failed for loop in self.loops),
            trainer_idle=max(0.0, 1.0 - self.trainer_busy / max(seconds, 1e-9)),
            policy_idle=max(0.0, 1.0 - busy / max(replicas * seconds, 1e-9)))


async def load_weights(policy: Any, handle: Any) -> None:
    """Every healthy replica loads ``handle``. A replica that dies meanwhile is no error: its
    service restarts it, and the restarted replica loads the newest weights before it serves."""
    results = await policy.update_weights.fanout(handle, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, SupervisionError):
            raise result


async def run_loop(config: LoopConfig, services: Services,
                   prompt_source: Callable[[int], list[Prompt]], log: Callable[[str], Any] = print,
                   before_step: Callable[[int], Any] | None = None,
                   on_step: Callable[[StepRecord], Any] | None = None) -> RunResult:
    """Run training steps ``config.first_step`` to ``config.steps - 1``; see the module
    docstring. ``before_step(step)`` (may be async) runs before each step, ``on_step(record)``
    after each."""
    loop = _Loop(config, services, prompt_source, log, before_step, on_step)
    result = await loop.run()
    result.dropped_stale = (await services.buffer.stats.call_one())["dropped_stale"]
    result.sample_records = await services.buffer.records.call_one()
    return result
