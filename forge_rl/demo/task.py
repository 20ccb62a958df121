"""The demo task: single-digit addition, checked by a pure-Python reward.

A prompt is "a+b=" (or "What is a+b?") and the correct completion is the
last digit of a+b followed by EOS. The answer is always one digit, so a
random policy that has learned only the format scores 1/10: that is the
chance level the learning check compares against.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TEMPLATES = {
    "short": "{a}+{b}=",
    "question": "What is {a}+{b}?",
}

_PROMPT_PATTERN = re.compile(r"(\d+)\+(\d+)")

# Reward levels. Only the exact answer (digit then EOS) counts as success.
# A right digit that is not followed by EOS earns partial credit: that gives
# GRPO a prompt-dependent signal from the very first step (an untrained model
# hits the digit ~1/vocab of the time but almost never the EOS after it).
# Wrong answers get nothing: a reward for "any digit" would be the same for
# every prompt and drives the policy to collapse onto one digit.
CORRECT_REWARD = 1.0
RIGHT_DIGIT_REWARD = 0.5
CHANCE_SUCCESS_RATE = 0.1


def expected_answer(prompt: str) -> str:
    match = _PROMPT_PATTERN.search(prompt)
    if match is None:
        raise ValueError(f"not an addition prompt: {prompt!r}")
    a, b = int(match.group(1)), int(match.group(2))
    return str((a + b) % 10)


def is_correct(prompt: str, completion: str) -> bool:
    """Success: the completion text (the terminating EOS excluded) is exactly the answer digit."""
    return completion == expected_answer(prompt)


def score(prompt: str, completion: str) -> float:
    """1.0 for exactly the answer; 0.5 if it only starts with the answer; else 0."""
    answer = expected_answer(prompt)
    if completion == answer:
        return CORRECT_REWARD
    if completion.startswith(answer):
        return RIGHT_DIGIT_REWARD
    return 0.0


@dataclass(frozen=True)
class AdditionTask:
    """Operands are drawn from 0..max_operand; the answer is (a+b) mod 10."""

    max_operand: int = 9
    template: str = "short"

    def all_prompts(self) -> list[str]:
        fmt = TEMPLATES[self.template]
        return [fmt.format(a=a, b=b) for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]

    def sample_prompts(self, rng: random.Random, count: int) -> list[str]:
        """`count` prompts drawn with replacement from `rng` (a `random.Random`)."""
        fmt = TEMPLATES[self.template]
        return [
            fmt.format(a=rng.randint(0, self.max_operand), b=rng.randint(0, self.max_operand))
            for _ in range(count)
        ]

    def prompt_source(self, seed: int, per_chunk: int):
        """The RL loop's prompt source: chunk ``i`` -> ``per_chunk`` prompts drawn from a
        generator seeded by (``seed``, ``i``) alone, so a chunk is the same in every run."""
        from forge_rl.types import Prompt

        def prompts(index: int) -> list[Prompt]:
            rng = random.Random(f"{seed}:prompts:{index}")
            return [Prompt(text) for text in self.sample_prompts(rng, per_chunk)]

        return prompts

    @staticmethod
    def score(prompt: str, completion: str) -> float:
        return score(prompt, completion)

    @staticmethod
    def is_correct(prompt: str, completion: str) -> bool:
        return is_correct(prompt, completion)
