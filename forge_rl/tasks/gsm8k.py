"""Math word problems in GSM8K's format, with a final-answer reward.

A problem is a JSONL line ``{"question": ..., "answer": "...reasoning... #### 42"}``: the
number after ``####`` is the answer. A completion earns 1.0 when the last number it states
(after ``####`` if it writes one, else anywhere) equals it, 0.1 for stating some other number
(a format reward, so that a model that has never been right still gets a signal), else 0.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the final answer, normalised ("42", "-3", "2.5")


def final_answer(text: str) -> str | None:
    """The number a text ends on: the one after its last ``####``, else its last number."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    return _normalise(numbers[0] if "####" in text else numbers[-1])


def _normalise(number: str) -> str:
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def load_problems(path: str) -> list[Problem]:
    """Every problem of a JSONL file; a bad line is an error that names its number."""
    problems = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                answer = final_answer(record["answer"])
                question = record["question"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a {{'question', 'answer'}} line "
                                 f"({exc!r})") from None
            if answer is None:
                raise ValueError(f"{path}:{number}: its answer has no final number "
                                 f"(GSM8K writes it after '####')")
            problems.append(Problem(question, answer))
    if not problems:
        raise ValueError(f"{path}: no problems in it")
    return problems


FORMAT_REWARD = 0.1  # for stating a number at all: a signal before the first right answer


def reward(completion: str, problem: Problem) -> float:
    answer = final_answer(completion)
    if answer == problem.answer:
        return 1.0
    return FORMAT_REWARD if answer is not None else 0.0


# -- the shipped set ---------------------------------------------------------------------------
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")
THINGS = ("apples", "books", "coins", "marbles", "pencils", "shells", "stamps", "cards")


def generate(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Small arithmetic word problems in GSM8K's format (what ``forge_rl/data`` ships)."""
    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        name, other = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS)
        a, b = rng.randint(2, 30), rng.randint(1, 20)
        kind = rng.choice(("more", "gives", "times"))
        if kind == "more":
            question = f"{name} has {a} {thing}. {other} gives {name} {b} more. How many {thing} does {name} have now?"
            steps, result = f"{a} + {b} = {a + b}", a + b
        elif kind == "gives":
            a = max(a, b + 1)
            question = f"{name} has {a} {thing} and gives {b} to {other}. How many {thing} does {name} have left?"
            steps, result = f"{a} - {b} = {a - b}", a - b
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            question = f"{name} buys {a} bags with {b} {thing} in each. How many {thing} is that?"
            steps, result = f"{a} * {b} = {a * b}", a * b
        problems.append({"question": question, "answer": f"{steps}\n#### {result}"})
    return problems


if __name__ == "__main__":  # python -m forge_rl.tasks.gsm8k > forge_rl/data/arithmetic_word_problems.jsonl
    for problem in generate(400):
        print(json.dumps(problem))
