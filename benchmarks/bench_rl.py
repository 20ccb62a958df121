"""Synchronous beside asynchronous RL: the demo's GRPO run in both modes, same seed and steps.

    python benchmarks/bench_rl.py [--steps 50] [--repeats 2] [--generator vllm|torch]
                                  [--max-policy-age 1] [--json benchmarks/results/rl.json]

Each repeat runs ``forge demo --mode sync`` and then ``--mode async`` (the order alternates
between repeats, so both see the same load on a shared machine), each on services of its own;
figures are medians over repeats, beside their min..max:

- samples/s: scored completions that reached the trainer, over the loop's wall time (service
  start-up excluded: it is the same in both modes);
- time to reward 0.7 and 0.8: loop seconds until the mean reward of the last 5 steps first
  reached it ("never" when the run ended first; 0.7 is the demo's learning bar);
- trainer idle: the fraction of the loop's time the trainer spent neither training nor
  publishing weights; policy idle: the fraction of replica-time not spent generating;
- last-10 reward and greedy accuracy: that the asynchronous run learns as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

from forge_core.bench import header as bench_header
from forge_rl.demo.loop import DemoConfig, run


def _median(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    return f"{statistics.median(known):8.2f} ({min(known):.2f}..{max(known):.2f})"


def figures(result) -> dict:
    rewards = [r.reward for r in result.steps]
    return {
        "samples_per_s": result.samples_per_s,
        "seconds": result.seconds,
        "seconds_to_reward_0.7": result.seconds_to_reward(0.7),
        "seconds_to_reward_0.8": result.seconds_to_reward(0.8),
        "trainer_idle": result.trainer_idle,
        "policy_idle": result.policy_idle,
        "last10_reward": statistics.fmean(rewards[-10:]),
        "greedy_accuracy": result.greedy_accuracy,
        "dropped_stale": result.dropped_stale,
    }


async def bench(args) -> dict:
    runs: dict[str, list[dict]] = {"sync": [], "async": []}
    for repeat in range(args.repeats):
        order = ("sync", "async") if repeat % 2 == 0 else ("async", "sync")
        for mode in order:
            cfg = DemoConfig(mode=mode, steps=args.steps, seed=args.seed,
                             generator=args.generator, max_policy_age=args.max_policy_age,
                             output=args.output)
            result = await run(cfg, log=lambda line: None)
            runs[mode].append(figures(result))
            print(f"repeat {repeat + 1} {mode:5s}: {result.samples_per_s:6.0f} samples/s, "
                  f"{result.seconds:5.1f} s, trainer idle {result.trainer_idle:.0%}, policy "
                  f"idle {result.policy_idle:.0%}, last-10 reward "
                  f"{runs[mode][-1]['last10_reward']:.3f}, greedy {result.greedy_accuracy:.0%}",
                  file=sys.stderr)
    return runs


def table(runs: dict[str, list[dict]]) -> list[str]:
    rows = [f"{'figure':<24}{'sync':>26}{'async':>26}{'async/sync':>12}"]
    for key, label in (("samples_per_s", "samples/s"), ("seconds_to_reward_0.7", "s to reward 0.7"),
                       ("seconds_to_reward_0.8", "s to reward 0.8"),
                       ("trainer_idle", "trainer idle"), ("policy_idle", "policy idle"),
                       ("last10_reward", "last-10 reward"), ("greedy_accuracy", "greedy accuracy"),
                       ("seconds", "loop seconds")):
        sync = [r[key] for r in runs["sync"]]
        asyn = [r[key] for r in runs["async"]]
        known_s = [v for v in sync if v is not None]
        known_a = [v for v in asyn if v is not None]
        ratio = (f"{statistics.median(known_a) / statistics.median(known_s):10.2f}x"
                 if known_s and known_a and statistics.median(known_s) else "")
        rows.append(f"{label:<24}{_median(sync):>26}{_median(asyn):>26}{ratio:>12}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator", default="auto")
    parser.add_argument("--max-policy-age", type=int, default=1)
    parser.add_argument("--output", default="/tmp/forge-bench-rl")
    parser.add_argument("--json", help="write the header, every run's figures and the table")
    args = parser.parse_args(argv)
    head = bench_header.collect()
    runs = asyncio.run(bench(args))
    head["load_avg_1m_end"] = os.getloadavg()[0]
    lines = [*bench_header.lines(head),
             f"run      {args.steps} steps, seed {args.seed}, {args.repeats} repeats per mode, "
             f"async max_policy_age {args.max_policy_age}, generator {args.generator}", "",
             *table(runs)]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": head, "args": vars(args), "runs": runs, "table": lines}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
