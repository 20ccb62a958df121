"""GRPO's pieces: group-relative advantages and a clipped, importance-weighted policy loss.

The loss is PPO's clipped surrogate per token. Samples may come from an older policy (an
asynchronous loop trains on rollouts made with weights up to ``max_policy_age`` versions old),
so each token's gradient is weighted by the importance ratio p_new / p_behaviour, clipped to
[1 - eps, 1 + eps] where that would push the policy further than the samples support. On fresh
samples the ratio is 1 and this is plain REINFORCE with group-normalised advantages.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def group_advantages(rewards: list[float], eps: float = 1e-6) -> list[float]:
    """(r - mean) / (std + eps) within one group; all-equal rewards give zeros."""
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    return [(r - mean) / (std + eps) for r in rewards]


def policy_loss(logprobs: "torch.Tensor", behaviour_logprobs: "torch.Tensor",
                advantages: "torch.Tensor", mask: "torch.Tensor", clip_eps: float = 0.2
                ) -> tuple["torch.Tensor", dict[str, float]]:
    """The clipped surrogate loss, averaged over the tokens where ``mask`` is true.

    ``logprobs`` (with grad) and ``behaviour_logprobs`` are [batch, tokens]: the current policy's
    and the generating policy's log-probabilities of the sampled tokens; ``advantages`` is
    [batch]. Returns the loss and, for logs, the mean ratio and the fraction of clipped tokens.
    """
    import torch

    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - behaviour_logprobs.detach())
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    tokens = mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / tokens
    with torch.no_grad():
        was_clipped = ((unclipped != clipped) & (mask > 0)).to(logprobs.dtype).sum() / tokens
        mean_ratio = (ratio * mask).sum() / tokens
    return loss, {"ratio_mean": float(mean_ratio), "clipped_fraction": float(was_clipped)}


def kl_penalty(logprobs: "torch.Tensor", ref_logprobs: "torch.Tensor", mask: "torch.Tensor"
               ) -> "torch.Tensor":
    """Mean over masked tokens of GRPO's k3 estimator of KL(policy || reference):
    exp(ref - lp) - (ref - lp) - 1, which is never negative and has low variance."""
    import torch

    mask = mask.to(logprobs.dtype)
    diff = ref_logprobs.detach() - logprobs
    per_token = torch.exp(diff) - diff - 1.0
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
