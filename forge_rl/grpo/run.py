"""``forge grpo``: start the services, run ``run_loop``, save the model, stop everything."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

from forge_core.actor import this_proc
from forge_core.observe import record_metric

from forge_rl.buffer import ReplayBuffer
from forge_rl.config import GRPOConfig, checkpoint_step, data_path, resolve_device
from forge_rl.loop import LoopConfig, RunResult, Services, StepRecord, run_loop
from forge_rl.tasks.gsm8k import load_problems
from forge_rl.types import Prompt
from forge_rl.versions import LatestWeights

from .actors import HFPolicy, MathReward, Reference, HFTrainer


def prompt_source(cfg: GRPOConfig, per_chunk: int):
    """Chunk ``i`` -> ``per_chunk`` problems drawn by a generator seeded by (seed, i) alone."""
    problems = load_problems(data_path(cfg))

    def prompts(index: int) -> list[Prompt]:
        rng = random.Random(f"{cfg.seed}:problems:{index}")
        return [Prompt(p.question, p.answer) for p in rng.sample(problems, per_chunk)]

    return prompts


def step_line(record: StepRecord, steps: int) -> str:
    seconds = " ".join(f"{k} {v:.2f}s" for k, v in record.seconds.items())
    return (f"step {record.step + 1:>3}/{steps}  reward {record.reward:.3f}  success "
            f"{record.success:.3f}  loss {record.loss:+.4f}  samples {record.samples}  age "
            f"{record.policy_age_max}  ({seconds})")


async def run(cfg: GRPOConfig, log=print) -> dict:
    """One run; returns what ``--json`` writes (the loop's run plus the trainer's stats)."""
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    logs = {"logs": "file", "log_file": str(output / "engines.log")}
    chunks = cfg.policy_replicas
    if cfg.prompts_per_step % chunks:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of "
                         f"policy_replicas ({chunks})")
    device = resolve_device(cfg.device)
    settings = {**dataclasses.asdict(cfg), "device": device}
    policy_dir = cfg.resume or cfg.model  # replicas start from the weights the trainer has
    first_step = checkpoint_step(cfg.resume) if cfg.resume else 0
    started = time.perf_counter()
    log(f"forge grpo ({cfg.mode}): {cfg.model}, {cfg.policy_replicas} policy replica(s), "
        f"beta {cfg.beta}" + (f", resuming {cfg.resume} at step {first_step + 1}"
                              if cfg.resume else ""))
    registry = this_proc().spawn("latest_weights", LatestWeights)
    reference = None
    if cfg.beta > 0:  # beta 0: no KL term, and no reference model is started
        reference = await Reference.options(**logs).as_actor(cfg.model, cfg.dtype, device)
    policy, reward, trainer, buffer = await asyncio.gather(
        HFPolicy.options(num_replicas=cfg.policy_replicas, probe_timeout=120, **logs)
        .as_service(policy_dir, cfg.dtype, cfg.generator, cfg.seed, cfg.max_len, registry,
                    device),
        MathReward.options(**logs).as_service(),
        HFTrainer.options(**logs).as_actor(settings, reference),
        ReplayBuffer.options(**logs).as_actor(max_policy_age=cfg.max_policy_age))
    engine = await policy.engine_name.route()
    log(f"services up in {time.perf_counter() - started:.1f} s (generator: {engine}); their "
        f"output is in {output / 'engines.log'}")
    services = Services(policy, reward, trainer, buffer, registry)
    losses = []

    def on_step(record: StepRecord) -> None:
        losses.append(record.loss)
        record_metric("reward", record.reward, reduce="mean")
        log(step_line(record, cfg.steps))

    try:
        digest_before = await trainer.weights_digest.call_one()
        loop_config = LoopConfig(mode=cfg.mode, steps=cfg.steps, chunks_per_step=chunks,
                                 group_size=cfg.group_size, max_tokens=cfg.max_tokens,
                                 temperature=cfg.temperature, max_policy_age=cfg.max_policy_age,
                                 rollout_loops=chunks, seed=cfg.seed, first_step=first_step)
        result: RunResult = await run_loop(loop_config, services,
                                           prompt_source(cfg, cfg.prompts_per_step // chunks),
                                           log=log, on_step=on_step)
        # The replicas answer from the trainer's latest weights: the same logprobs.
        prompt_ids, completion_ids, expected = await trainer.probe.call_one(
            "Ana has 3 apples. #### 3")
        served = await policy.completion_logprobs.route(prompt_ids, completion_ids)
        sync_error = max(abs(a - b) for a, b in zip(expected, served))
        log(f"weight sync: replica and trainer logprobs differ by at most {sync_error:.1e}")
        backends = await trainer.weight_sync_backends.call_one()
        checkpoint = await trainer.save.call_one()
        digest_after = await trainer.weights_digest.call_one()
        log(f"{result.samples_per_s:.0f} samples/s; model saved to {checkpoint}")
    finally:
        await asyncio.gather(policy.shutdown(), reward.shutdown(), HFTrainer.shutdown(trainer),
                             ReplayBuffer.shutdown(buffer), return_exceptions=True)
        if reference is not None:
            await Reference.shutdown(reference)
    report = result.to_json()
    report.update({"first_step": first_step, "losses": losses, "checkpoint": checkpoint,
                   "weights_changed": digest_after != digest_before,
                   "reference": reference is not None, "sync_max_abs_diff": sync_error,
                   "generator": engine, "device": device, "weight_sync_backends": backends})
    return report
