"""Single-process check that the demo's RL loop actually learns.

    python -m forge_rl.demo.learncheck [--seed 0] [--steps 50] [--generator torch|vllm]

Each step: sample prompts -> generate G completions per prompt with the
torch generator -> score -> group-relative advantages -> one GRPO update ->
copy the trainer's weights into the generator. Prints per-step mean reward
and success rate, then the first-10 / last-10 step means.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field

import torch

from forge_rl.demo.grpo import Trainer, build_experiences
from forge_rl.demo.model import ModelConfig, count_parameters
from forge_rl.demo.task import CHANCE_SUCCESS_RATE, AdditionTask
from forge_rl.demo.tokenizer import CharTokenizer
from forge_rl.demo.torch_generator import TorchGenerator


@dataclass
class LearnConfig:
    """Defaults are the tuned demo settings."""

    seed: int = 0
    steps: int = 50
    prompts_per_step: int = 64
    group_size: int = 16
    max_tokens: int = 2
    temperature: float = 1.0
    lr: float = 3e-3
    max_operand: int = 9
    template: str = "short"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    init_std: float = 0.1
    generator: str = "torch"  # or "vllm" (needs vllm installed)


@dataclass
class LearnResult:
    rewards: list[float] = field(default_factory=list)  # per-step mean reward
    success: list[float] = field(default_factory=list)  # per-step fraction correct
    seconds: float = 0.0

    def window(self, values: list[float], first: bool, size: int = 10) -> float:
        part = values[:size] if first else values[-size:]
        return statistics.fmean(part)


def model_config_for(cfg: LearnConfig, tokenizer: CharTokenizer) -> ModelConfig:
    return ModelConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads,
        init_std=cfg.init_std,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


def run(cfg: LearnConfig, log=print) -> LearnResult:
    torch.manual_seed(cfg.seed)
    tokenizer = CharTokenizer()
    model_cfg = model_config_for(cfg, tokenizer)
    task = AdditionTask(max_operand=cfg.max_operand, template=cfg.template)
    trainer = Trainer(model_cfg, init_seed=cfg.seed, lr=cfg.lr, pad_id=tokenizer.pad_id)
    if cfg.generator == "vllm":
        from forge_rl.demo.vllm_generator import VLLMGenerator

        generator = VLLMGenerator(model_cfg, seed=cfg.seed + 1, init_seed=cfg.seed, tokenizer=tokenizer)
    else:
        generator = TorchGenerator(model_cfg, seed=cfg.seed + 1, init_seed=cfg.seed, tokenizer=tokenizer)
    prompt_rng = random.Random(cfg.seed)
    log(f"model: {count_parameters(trainer.model)} parameters; chance success rate {CHANCE_SUCCESS_RATE}")

    result = LearnResult()
    start = time.perf_counter()
    for step in range(cfg.steps):
        prompts = task.sample_prompts(prompt_rng, cfg.prompts_per_step)
        groups = generator.generate(prompts, n=cfg.group_size, max_tokens=cfg.max_tokens, temperature=cfg.temperature)
        rewards = [[task.score(c.prompt, c.text) for c in group] for group in groups]
        correct = [task.is_correct(c.prompt, c.text) for group in groups for c in group]
        batch = build_experiences(groups, rewards, policy_version=trainer.version)
        stats = trainer.step(batch)
        generator.load_state_dict(trainer.state_dict(), version=trainer.version)

        result.rewards.append(statistics.fmean(r for group in rewards for r in group))
        result.success.append(statistics.fmean(correct))
        log(
            f"step {step:3d}  reward {result.rewards[-1]:.3f}  success {result.success[-1]:.3f}  "
            f"loss {stats['loss']:+.4f}  samples {stats['num_samples']:4d}  t {time.perf_counter() - start:5.1f}s"
        )
    result.seconds = time.perf_counter() - start
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = LearnConfig()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = LearnConfig(**{k: v for k, v in vars(args).items() if k in vars(defaults)})
    result = run(cfg)
    first, last = result.window(result.rewards, True), result.window(result.rewards, False)
    print(
        f"seed {cfg.seed}: reward first-10 {first:.3f} last-10 {last:.3f} (x{last / max(first, 1e-9):.1f}); "
        f"success first-10 {result.window(result.success, True):.3f} last-10 {result.window(result.success, False):.3f}; "
        f"{result.seconds:.1f}s"
    )


if __name__ == "__main__":
    main()
