"""Scored groups into training samples: one ``Experience`` per completion, with its
group-relative advantage and the behaviour policy's logprobs (for the importance ratio)."""

from __future__ import annotations

from dataclasses import dataclass

from forge_rl.losses import group_advantages
from forge_rl.types import ScoredGroup


@dataclass
class Experience:
    """One training sample; plain lists and floats so it pickles anywhere."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    behaviour_logprobs: list[float]
    reward: float = 0.0
    policy_version: int = 0


def build_experiences(groups: list[ScoredGroup]) -> list[Experience]:
    """One experience per completion of each group that has a learning signal.

    Groups whose rewards are all equal are dropped: their advantages are all zero, so they
    would only cost compute in the update.
    """
    experiences = []
    for group in groups:
        advantages = group_advantages(group.rewards)
        if all(a == 0.0 for a in advantages):
            continue
        for completion, reward, advantage in zip(group.completions, group.rewards, advantages):
            if not completion.token_ids:
                continue
            behaviour = list(completion.logprobs)
            if len(behaviour) != len(completion.token_ids):
                raise ValueError(f"a completion of {completion.prompt!r} has "
                                 f"{len(completion.token_ids)} tokens but {len(behaviour)} "
                                 f"logprobs: the generator must report one per sampled token")
            experiences.append(Experience(
                prompt_ids=list(completion.prompt_ids), completion_ids=list(completion.token_ids),
                advantage=advantage, behaviour_logprobs=behaviour, reward=reward,
                policy_version=group.policy_version))
    return experiences
