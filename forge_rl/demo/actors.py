"""The demo's actors: policy replicas, a reward service, a replay buffer and a trainer.

Each wraps the framework-free pieces of this package (``torch_generator``, ``vllm_generator``,
``task``, ``grpo``) in a Forge actor, so that they run in processes of their own.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from forge_core import ForgeActor, endpoint


def _one_thread() -> None:
    """Two CPU cores are shared by every process of the demo: one torch thread each."""
    import torch

    torch.set_num_threads(1)


class Policy(ForgeActor):
    """Generates completions with vLLM (or the torch stand-in) and takes new weights in place.

    Weight updates never mix with generation: the actor handles one message at a time (neither
    endpoint is ``concurrent``), so an ``update_weights`` call waits for the generation in
    progress, and the next generation sees the new weights only.
    """

    def __init__(self, model_config: Any, seed: int, generator: str):
        self.model_config = model_config
        self.seed = seed
        self.generator_kind = generator
        self.generator: Any = None
        self.version = 0

    async def setup(self) -> None:
        _one_thread()
        # Building an engine and generating take seconds: they run on a worker thread so that
        # this process's event loop keeps answering liveness probes meanwhile.
        self.generator = await asyncio.to_thread(self._build_generator)

    def _build_generator(self) -> Any:
        if self.generator_kind == "vllm":
            from .vllm_generator import VLLMGenerator

            return VLLMGenerator(self.model_config, seed=self.seed, init_seed=0)
        from .torch_generator import TorchGenerator

        return TorchGenerator(self.model_config, seed=self.seed, init_seed=0)

    @endpoint
    async def generate(self, prompts: list[str], n: int, max_tokens: int, temperature: float
                       ) -> tuple[int, list]:
        """-> (the weights version that generated them, one group of n completions per prompt)"""
        groups = await asyncio.to_thread(self.generator.generate, prompts, n=n,
                                         max_tokens=max_tokens, temperature=temperature)
        return self.version, groups

    @endpoint
    async def update_weights(self, handle: Any) -> int:
        # The tensors handed to the loader are views of the published snapshot (shared memory
        # on one host): the generator copies them into its own weights, once.
        await handle.load_into(lambda tensors: self.generator.load_state_dict(
            tensors, version=handle.version))
        self.version = handle.version
        return self.version

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class Reward(ForgeActor):
    """Scores completions of the arithmetic task (pure Python, CPU replicas)."""

    @endpoint
    def score(self, groups: list[list[Any]]) -> tuple[list[list[float]], float]:
        """-> (a reward per completion, the fraction exactly right)"""
        from .task import AdditionTask

        rewards = [[AdditionTask.score(c.prompt, c.text) for c in group] for group in groups]
        right = [AdditionTask.is_correct(c.prompt, c.text) for group in groups for c in group]
        return rewards, sum(right) / max(len(right), 1)


class ReplayBuffer(ForgeActor):
    """Holds experiences until the trainer takes them; drops ones from too-old policies."""

    def __init__(self, max_staleness: int = 1):
        self.items: list = []
        self.max_staleness = max_staleness

    @endpoint
    def add(self, experiences: list) -> int:
        self.items.extend(experiences)
        return len(self.items)

    @endpoint
    def take(self, current_version: int) -> list:
        fresh = [e for e in self.items
                 if current_version - e.policy_version <= self.max_staleness]
        self.items = []
        return fresh


class Trainer(ForgeActor):
    """GRPO updates on a torch model; publishes its weights for the policy replicas."""

    def __init__(self, model_config: Any, seed: int, lr: float, backend: str = "auto"):
        self.model_config = model_config
        self.seed = seed
        self.lr = lr
        self.backend = backend

    async def setup(self) -> None:
        _one_thread()
        from forge_core.weights import WeightPublisher

        from .grpo import Trainer as GRPOTrainer

        self.trainer = GRPOTrainer(self.model_config, init_seed=0, lr=self.lr,
                                   pad_id=self.model_config.pad_token_id)
        random.seed(self.seed)
        self.publisher = WeightPublisher(backend=self.backend)

    @endpoint
    def train_step(self, batch: list) -> dict:
        start = time.perf_counter()
        stats = self.trainer.step(batch) if batch else {"loss": 0.0, "num_samples": 0}
        stats["seconds"] = time.perf_counter() - start
        stats["version"] = self.trainer.version
        return stats

    @endpoint
    async def push_weights(self) -> Any:
        return await self.publisher.publish(self.trainer.model.state_dict(), self.trainer.version)
