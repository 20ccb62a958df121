"""The actors of ``forge grpo``: they keep the endpoint contracts of ``forge_rl.loop``."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from forge_core import ForgeActor, endpoint
from forge_core.weights import WeightPublisher, WeightsGate

from forge_rl.types import Completion, Prompt
from forge_rl.versions import load_latest


def _threads() -> None:
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("FORGE_TORCH_THREADS", "1"))))


class HFPolicy(ForgeActor):
    """Samples completions from the model directory with vLLM (or transformers: see
    ``engines``) and takes new weights in place behind a ``WeightsGate``: no answer mixes
    two versions. The engine runs one batch at a time on a worker thread, so the event loop
    keeps answering probes and weight updates meanwhile."""

    def __init__(self, model_dir: str, dtype: str, generator: str, seed: int, max_len: int,
                 registry: Any = None, device: str = "cpu"):
        self.model_dir, self.dtype, self.generator = model_dir, dtype, generator
        self.device = device
        self.seed, self.max_len = seed, max_len
        self.registry = registry
        self.gate = WeightsGate(version=0)
        self.busy_seconds = 0.0

    async def setup(self) -> None:
        from .engines import make_engine

        _threads()
        self._engine_lock = asyncio.Lock()
        self.engine = await asyncio.to_thread(make_engine, self.generator, self.model_dir,
                                              self.dtype, self.seed, self.max_len, self.device)
        self.tokenizer = self.engine.tokenizer
        await load_latest(self.registry, self.gate, self.engine.load)

    @endpoint(concurrent=True)
    async def generate(self, prompts: list[str], n: int, max_tokens: int, temperature: float,
                       seed: int | None = None) -> tuple[int, list]:
        from forge_rl import hf

        prompt_ids = [hf.prompt_ids(self.tokenizer, text) for text in prompts]
        async with self._engine_lock:
            async with self.gate.generating() as version:
                started = time.perf_counter()
                groups = await asyncio.to_thread(self.engine.sample, prompts, prompt_ids, n,
                                                 max_tokens, temperature, seed)
                self.busy_seconds += time.perf_counter() - started
        return version, groups

    @endpoint(concurrent=True)
    async def update_weights(self, handle: Any) -> int:
        await self.gate.update(handle, self.engine.load)
        return self.gate.version

    @endpoint
    def busy(self) -> tuple[int, float]:
        return os.getpid(), self.busy_seconds

    @endpoint
    def engine_name(self) -> str:
        return self.engine.name

    @endpoint(concurrent=True)
    async def completion_logprobs(self, prompt_ids: list[int], completion_ids: list[int]
                                  ) -> list[float]:
        """This replica's logprobs of a fixed completion (weight-sync checks)."""
        async with self._engine_lock:
            async with self.gate.generating():
                return await asyncio.to_thread(self.engine.logprobs, prompt_ids, completion_ids)


class MathReward(ForgeActor):
    """1.0 when a completion's final number is the problem's answer (GSM8K's rule)."""

    @endpoint
    def score(self, prompts: list[Prompt], groups: list[list[Completion]]
              ) -> tuple[list[list[float]], float]:
        from forge_rl.tasks.gsm8k import Problem, reward

        rewards = [[reward(c.text, Problem(p.text, p.answer or "")) for c in group]
                   for p, group in zip(prompts, groups)]
        flat = [r for group in rewards for r in group]
        return rewards, sum(r == 1.0 for r in flat) / max(len(flat), 1)


class Reference(ForgeActor):
    """The frozen starting model: per-token logprobs for the KL term."""

    def __init__(self, model_dir: str, dtype: str, device: str = "cpu"):
        self.model_dir, self.dtype, self.device = model_dir, dtype, device

    async def setup(self) -> None:
        from forge_rl import hf

        _threads()
        self.tokenizer = hf.load_tokenizer(self.model_dir)
        self.model = hf.load_model(self.model_dir, self.dtype, self.device).eval()
        self.model.requires_grad_(False)

    @endpoint
    def logprobs(self, prompts: list[list[int]], completions: list[list[int]]
                 ) -> list[list[float]]:
        import torch

        from forge_rl import hf

        with torch.no_grad():
            return [t.tolist() for t in hf.completion_logprobs(
                self.model, prompts, completions, self.tokenizer.pad_token_id)]


class HFTrainer(ForgeActor):
    """GRPO updates of the HF model; checkpoints; publishes weights under their HF names."""

    def __init__(self, settings: dict[str, Any], reference: Any = None):
        self.s = settings  # the GRPOConfig's fields, as a dict
        self.reference = reference

    async def setup(self) -> None:
        import torch

        from forge_rl import hf

        _threads()
        random.seed(self.s["seed"])
        torch.manual_seed(self.s["seed"])
        start_from = self.s["resume"] or self.s["model"]
        self.tokenizer = hf.load_tokenizer(start_from)
        self.model = hf.load_model(start_from, self.s["dtype"], self.s["device"]).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.s["lr"])
        # Versions count this run's steps (the loop's staleness bound compares them with the
        # replicas'); a resumed run's checkpoints go on from the step it resumed at.
        self.first_step = (hf.load_trainer_state(start_from, self.optimizer)
                           if self.s["resume"] else 0)
        self.version = 0
        self.publisher = WeightPublisher(backend=self.s["weight_sync"])

    @endpoint
    async def train_step(self, batch: list) -> dict:
        import torch

        from forge_rl import hf
        from forge_rl.experience import build_experiences
        from forge_rl.losses import kl_penalty, policy_loss

        started = time.perf_counter()
        samples = build_experiences(batch)
        self.version += 1
        stats: dict[str, Any] = {"version": self.version, "num_samples": len(samples)}
        if samples:
            prompts = [e.prompt_ids for e in samples]
            completions = [e.completion_ids for e in samples]
            new = hf.completion_logprobs(self.model, prompts, completions,
                                         self.tokenizer.pad_token_id)
            width = max(len(c) for c in completions)
            device = next(self.model.parameters()).device
            mask = torch.zeros(len(samples), width, device=device)
            behaviour = torch.zeros(len(samples), width, device=device)
            rows = []
            for i, (lp, e) in enumerate(zip(new, samples)):
                mask[i, :len(lp)] = 1
                behaviour[i, :len(lp)] = torch.tensor(e.behaviour_logprobs)
                rows.append(torch.nn.functional.pad(lp, (0, width - len(lp))))
            current = torch.stack(rows)
            advantages = torch.tensor([e.advantage for e in samples], device=device)
            loss, extra = policy_loss(current, behaviour, advantages, mask, self.s["clip_eps"])
            stats.update(extra)
            if self.reference is not None and self.s["beta"] > 0:
                ref = await self.reference.logprobs.call_one(prompts, completions)
                ref_t = torch.zeros(len(samples), width, device=device)
                for i, r in enumerate(ref):
                    ref_t[i, :len(r)] = torch.tensor(r)
                kl = kl_penalty(current, ref_t, mask)
                loss = loss + self.s["beta"] * kl
                stats["kl"] = float(kl)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
            self.optimizer.step()
            stats["loss"] = float(loss.detach())
        else:
            stats["loss"] = 0.0
        every = self.s["checkpoint_every"]
        if every and (self.first_step + self.version) % every == 0:
            stats["checkpoint"] = self.save()
        stats["seconds"] = time.perf_counter() - started
        return stats

    @endpoint
    def save(self) -> str:
        from forge_rl import hf

        step = self.first_step + self.version
        path = os.path.join(self.s["output"], "checkpoints", f"step-{step}")
        return hf.save_checkpoint(path, self.model, self.tokenizer, self.optimizer, step)

    @endpoint
    def probe(self, text: str) -> tuple[list[int], list[int], list[float]]:
        """The trainer's own logprobs of ``text`` as the answer to ``text``: replicas must
        report the same after a weight sync."""
        import torch

        from forge_rl import hf

        prompt = hf.prompt_ids(self.tokenizer, text)
        completion = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            [lps] = hf.completion_logprobs(self.model, [prompt], [completion],
                                           self.tokenizer.pad_token_id)
        return prompt, completion, lps.tolist()

    @endpoint
    def weights_digest(self) -> float:
        """A number that changes when any weight does (for tests and logs)."""
        return float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))

    @endpoint
    async def push_weights(self) -> Any:
        from forge_rl import hf

        handle = await self.publisher.publish(hf.state_dict_for_sync(self.model), self.version)
        self.backends = [name for name, _ in handle.sources]  # e.g. ["shm"], ["cuda_ipc"]
        return handle

    @endpoint
    def weight_sync_backends(self) -> list[str]:
        """Where the last published weights could be read from, best first."""
        return list(getattr(self, "backends", []))
