"""The PPO clipped surrogate, shared by the methods that take policy-gradient steps on the sampling chain."""
from __future__ import annotations

import torch


def ppo_clipped_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                     clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate (to minimise) and the ratio. All inputs (B,); returns (scalar, (B,)) on log_prob's
    device (advantages come from rewards, which are computed on the CPU)."""
    advantages = advantages.to(log_prob.device)
    ratio = torch.exp(log_prob - old_log_prob.to(log_prob.device))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio
