"""Reward weightings: how a batch of rewards becomes the weights of a weighted maximum-likelihood step
(orw_cfm_w2's flow matching on its own samples, aihf's policy step on the learned reward).

The exp weighting, softmax(z / tau) of the rewards z standardized over the batch, is the self-normalized
importance weight of the tilted distribution p_ref(x) exp(r(x) / tau) on samples of the current model, with tau in
units of the batch's reward std so that one tau means the same tilt on every reward scale.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("exp", "linear", "rank", "uniform")


def reward_weights(rewards: torch.Tensor, weighting: str, tau: float) -> torch.Tensor:
    """Normalized weights (B,) summing to 1 for rewards (B,): exp (softmax(z / tau)), linear (z - min z), rank
    (1 for the worst to B for the best) or uniform. A batch of equal rewards gets uniform weights."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if weighting == "uniform":
        return torch.full_like(rewards, 1 / len(rewards))
    if weighting == "rank":
        ranks = rewards.argsort().argsort().to(rewards.dtype) + 1
        return ranks / ranks.sum()
    std = rewards.std(unbiased=False)
    z = (rewards - rewards.mean()) / std if std > 0 else torch.zeros_like(rewards)
    if weighting == "exp":
        return torch.softmax(z / tau, dim=0)
    shifted = z - z.min()
    return shifted / shifted.sum() if shifted.sum() > 0 else torch.full_like(rewards, 1 / len(rewards))
