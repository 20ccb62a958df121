"""The demo's actors: policy replicas, a reward service and a trainer.

Each wraps the framework-free pieces of this package (``torch_generator``, ``vllm_generator``,
``task``, ``grpo``) in a Forge actor, keeping the endpoint contracts of ``forge_rl.loop``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from forge_core import ForgeActor, endpoint
from forge_core.weights import WeightPublisher, WeightsGate

from forge_rl.types import Prompt
from forge_rl.versions import load_latest


def _one_thread() -> None:
    """Two CPU cores are shared by every process of the demo: one torch thread each."""
    import torch

    torch.set_num_threads(1)


class Policy(ForgeActor):
    """Generates completions with vLLM (or the torch stand-in) and takes new weights in place.

    Generations overlap with weight loading safely: ``generate`` and ``update_weights`` are
    concurrent endpoints, and the ``WeightsGate`` lets the generation that runs finish, holds
    new ones back while the weights load, then resumes; no answer mixes two versions. The
    engine runs one batch at a time (``_engine``), on a worker thread, so this process's event
    loop keeps answering liveness probes and weight updates meanwhile.
    """

    def __init__(self, model_config: Any, seed: int, generator: str, registry: Any = None,
                 nice: int = 0):
        self.model_config = model_config
        self.nice = nice
        self.seed = seed
        self.generator_kind = generator
        self.registry = registry
        self.generator: Any = None
        self.gate = WeightsGate(version=0)
        self.busy_seconds = 0.0
        self.first_versions: list[int] = []  # the versions of this replica's first answers

    async def setup(self) -> None:
        if self.nice:
            # Before any worker thread starts: Linux niceness is per thread, and inherited.
            os.nice(self.nice)
        _one_thread()
        self._engine = asyncio.Lock()
        self.generator = await asyncio.to_thread(self._build_generator)
        # The engine's first batch is slow (vLLM prepares its kernels): take that here, before
        # the replica counts as up, rather than in the first step.
        await asyncio.to_thread(self.generator.generate, ["0+0="], n=2, max_tokens=2, seed=0)
        # A replica that starts mid-run (a restart) serves the newest weights from its first
        # answer on.
        await load_latest(self.registry, self.gate, self._load)

    def _build_generator(self) -> Any:
        if self.generator_kind == "vllm":
            from .vllm_generator import VLLMGenerator

            return VLLMGenerator(self.model_config, seed=self.seed, init_seed=0)
        from .torch_generator import TorchGenerator

        return TorchGenerator(self.model_config, seed=self.seed, init_seed=0)

    def _load(self, tensors: dict) -> None:
        # The tensors are views of the published snapshot (shared memory on one host): the
        # generator copies them into its own weights, once.
        self.generator.load_state_dict(tensors)

    @endpoint(concurrent=True)
    async def generate(self, prompts: list[str], n: int, max_tokens: int, temperature: float,
                       seed: int | None = None) -> tuple[int, list]:
        """-> (the weights version that generated them, one group of n completions per prompt)"""
        async with self._engine:
            async with self.gate.generating() as version:
                started = time.perf_counter()
                groups = await asyncio.to_thread(self.generator.generate, prompts, n=n,
                                                 max_tokens=max_tokens, temperature=temperature,
                                                 seed=seed)
                self.busy_seconds += time.perf_counter() - started
        if len(self.first_versions) < 8:
            self.first_versions.append(version)
        return version, groups

    @endpoint(concurrent=True)
    async def update_weights(self, handle: Any) -> int:
        await self.gate.update(handle, self._load)
        return self.gate.version

    @endpoint
    def busy(self) -> tuple[int, float]:
        """(pid, seconds spent generating so far): for the loop's idle figure."""
        return os.getpid(), self.busy_seconds

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def answered_versions(self) -> tuple[int, list[int]]:
        """(pid, the weights versions of this replica's first answers): shows that a replica
        the service restarted served the newest weights from its first answer on."""
        return os.getpid(), list(self.first_versions)


class Reward(ForgeActor):
    """Scores completions of the arithmetic task (pure Python, CPU replicas)."""

    @endpoint
    def score(self, prompts: list[Prompt], groups: list[list[Any]]
              ) -> tuple[list[list[float]], float]:
        """-> (a reward per completion, the fraction exactly right)"""
        from .task import AdditionTask

        rewards = [[AdditionTask.score(c.prompt, c.text) for c in group] for group in groups]
        right = [AdditionTask.is_correct(c.prompt, c.text) for group in groups for c in group]
        return rewards, sum(right) / max(len(right), 1)


class Trainer(ForgeActor):
    """GRPO updates on a torch model; publishes its weights for the policy replicas."""

    def __init__(self, model_config: Any, seed: int, lr: float, backend: str = "auto"):
        self.model_config = model_config
        self.seed = seed
        self.lr = lr
        self.backend = backend

    async def setup(self) -> None:
        _one_thread()
        from .grpo import Trainer as GRPOTrainer

        self.trainer = GRPOTrainer(self.model_config, init_seed=0, lr=self.lr,
                                   pad_id=self.model_config.pad_token_id)
        random.seed(self.seed)
        self.publisher = WeightPublisher(backend=self.backend)

    @endpoint
    def train_step(self, batch: list) -> dict:
        start = time.perf_counter()
        stats = self.trainer.step(batch)
        stats["seconds"] = time.perf_counter() - start
        return stats

    @endpoint
    async def push_weights(self) -> Any:
        return await self.publisher.publish(self.trainer.model.state_dict(), self.trainer.version)
