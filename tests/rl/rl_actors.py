"""Actors for the RL-layer tests: the demo's policy with faults added."""

from __future__ import annotations

from forge_core import endpoint

from forge_rl.demo.actors import Policy


class FlakyPolicy(Policy):
    """The demo policy, except that a call whose seed is divisible by 3 raises."""

    @endpoint(concurrent=True)
    async def generate(self, prompts, n, max_tokens, temperature, seed=None):
        if seed is not None and seed % 3 == 0:
            raise ValueError(f"flaky policy: refusing seed {seed}")
        return await super().generate(prompts, n, max_tokens, temperature, seed)
