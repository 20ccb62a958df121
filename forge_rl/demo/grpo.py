"""GRPO on the demo's tiny model: scored groups in, one optimizer step out.

For each prompt the policy samples a group of G completions; each completion's advantage is
its reward relative to its own group, (r - mean) / (std + eps), so no value model is needed.
The loss is ``forge_rl.losses.policy_loss``: the clipped importance-weighted surrogate over
every completion token of the batch, with the behaviour policy's logprobs (the ones the
generator reported) in the ratio, since samples may come from weights a version or two old.
"""

from __future__ import annotations

import torch

from forge_rl.demo.model import LlamaForCausalLM, ModelConfig, build_model, log_probs_of
from forge_rl.experience import Experience, build_experiences
from forge_rl.losses import policy_loss
from forge_rl.types import ScoredGroup


def collate(batch: list[Experience], pad_id: int):
    """Right-padded input ids, attention mask, per-position targets and behaviour logprobs.

    targets[:, t] is the token at t+1 where that token belongs to the completion, else -1, so
    the loss looks at completion tokens only; behaviour[:, t] is its logprob when sampled.
    """
    sequences = [e.prompt_ids + e.completion_ids for e in batch]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.full((len(batch), width), -1, dtype=torch.long)
    behaviour = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, (e, seq) in enumerate(zip(batch, sequences)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        start = len(e.prompt_ids) - 1  # logits at the last prompt token predict the first completion token
        end = start + len(e.completion_ids)
        targets[i, start:end] = torch.tensor(e.completion_ids)
        behaviour[i, start:end] = torch.tensor(e.behaviour_logprobs)
    advantages = torch.tensor([e.advantage for e in batch], dtype=torch.float32)
    return input_ids, mask, targets, behaviour, advantages


def grpo_loss(model: LlamaForCausalLM, batch: list[Experience], pad_id: int, clip_eps: float = 0.2):
    """The clipped surrogate over completion tokens; also returns the token count and stats."""
    input_ids, mask, targets, behaviour, advantages = collate(batch, pad_id)
    logits = model(input_ids, mask)
    is_target = targets >= 0
    token_logprobs = log_probs_of(logits, targets.clamp(min=0))
    loss, stats = policy_loss(token_logprobs, behaviour, advantages, is_target, clip_eps)
    return loss, int(is_target.sum()), stats


class Trainer:
    """Owns the policy and its Adam optimizer; ``step(groups)`` is one update.

    ``version`` counts steps, including steps with nothing to learn (every group's rewards
    equal): each step publishes a new version, so versions and steps stay in line.
    """

    def __init__(self, model_config: ModelConfig, init_seed: int = 0, lr: float = 3e-3,
                 max_grad_norm: float = 1.0, pad_id: int = 0, clip_eps: float = 0.2):
        self.model = build_model(model_config, init_seed).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.max_grad_norm = max_grad_norm
        self.pad_id = pad_id
        self.clip_eps = clip_eps
        self.version = 0

    def step(self, groups: list[ScoredGroup]) -> dict:
        batch = build_experiences(groups)
        self.version += 1
        if not batch:
            return {"loss": 0.0, "num_tokens": 0, "num_samples": 0, "grad_norm": 0.0,
                    "version": self.version, "skipped": True}
        loss, num_tokens, stats = grpo_loss(self.model, batch, self.pad_id, self.clip_eps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "num_tokens": num_tokens,
                "num_samples": len(batch), "grad_norm": float(grad_norm),
                "version": self.version, "skipped": False, **stats}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the weights, safe to ship to generators."""
        return {name: t.detach().clone() for name, t in self.model.state_dict().items()}
