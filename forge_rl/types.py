"""The data that flows through an RL loop: prompts, completions, scored groups.

Plain dataclasses of lists, strings and numbers, so they pickle cheaply between any processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One task item: the text the policy sees and, for the reward, the answer (if any)."""

    text: str
    answer: str | None = None


@dataclass
class Completion:
    """One sampled completion.

    ``token_ids`` include the EOS token when the model emitted one; ``text`` is every generated
    token but that final EOS, other special tokens spelled out (as vLLM does with
    ``skip_special_tokens=False``), so "3<pad>" never passes as "3". ``logprobs[i]`` is the
    log-probability of ``token_ids[i]`` under the behaviour policy's own (temperature 1)
    distribution, as vLLM reports sampled-token logprobs: the off-policy correction needs it.
    """

    prompt: str
    prompt_ids: list[int]
    text: str
    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" when EOS was emitted


@dataclass
class ScoredGroup:
    """One prompt's group of completions with their rewards: the replay buffer's unit.

    ``index`` is the prompt's place in the run (chunk after chunk), so batches come out of the
    buffer in the same order whatever order the rollouts finished in. ``policy_version`` is the
    weights version that generated every completion of the group.
    """

    index: int
    prompt: Prompt
    completions: list[Completion]
    rewards: list[float]
    policy_version: int

    @property
    def num_samples(self) -> int:
        return len(self.completions)
