"""`gdpo`: GDPO (Liu et al., "GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL
Optimization", arXiv 2601.05242; for images in Flow-Factory).

A run's reward may name several rewards with weights (`--reward digit+0.5*compress`: rewards/combined.py). GRPO
normalizes their weighted sum within the group, A_i = (R_i - mean(R)) / std(R) with R = sum_k w_k R_k, and two
samples whose rewards differ term by term can collapse into one advantage (the paper's "reward signal collapse"): a
reward of large spread drowns the others. GDPO normalizes each reward within the group first, then sums, then
normalizes the sum over the whole batch so that its scale does not grow with the number of rewards:
  A_k,i = (R_k,i - mean_g(R_k)) / (std_g(R_k) + 1e-6),     A_i = sum_k w_k A_k,i,
  Â_i = (A_i - mean_batch(A)) / (std_batch(A) + 1e-6),
and trains Flow-GRPO's clipped objective on Â (methods/flow_grpo.py: the flow SDE, or CPS with `dynamics = "cps"`,
its 10 training steps and KL weight). With one reward it is GRPO's advantage rescaled by the batch (a test).

Departures from the paper: the paper's policies are language models trained with GRPO's token-level objective; here
the update is Flow-GRPO's on flow chains, as Flow-Factory ports it to images. The batch statistics are over every
process's samples (the batch is the config's whatever the number of processes); Â is clipped to
[-adv_clip, adv_clip] as every GRPO-family method's advantage is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.toolkit.policy_gradient import (
    FLOW_SDE_SEARCH,
    FlowGRPOOptions,
    PolicyGradientTrainer,
    ppo_epochs,
    zero_std_groups,
)
from methods.trainer import Parallel
from models.sampler import Sampler
from rewards.combined import reward_weights


def decoupled_advantages(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float], groups: int, parallel: Parallel, clip: float
) -> torch.Tensor:
    """GDPO's advantages of this process's group-major (G * K,) samples: each reward term normalized within its
    group, weighted and summed, the sum normalized over every process's batch, clipped."""
    total = torch.zeros(len(next(iter(terms.values()))))
    for name, weight in weights.items():
        grouped = terms[name].float().view(groups, -1)
        centered = grouped - grouped.mean(dim=1, keepdim=True)
        total += weight * (centered / (grouped.std(dim=1, keepdim=True, unbiased=False) + 1e-6)).flatten()
    batch = parallel.gather(total)
    return ((total - batch.mean()) / (batch.std(unbiased=False) + 1e-6)).clamp(-clip, clip)


@dataclass(frozen=True)
class Config(FlowGRPOOptions):
    """GDPO's options: Flow-GRPO's (methods/toolkit/policy_gradient.py: FlowGRPOOptions); the rewards and their
    weights are the run's reward spec."""

    groups_apart: ClassVar[bool] = False  # each term's spread is the whole batch's (decoupled_advantages)


class GDPO(PolicyGradientTrainer):
    name = "gdpo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = FLOW_SDE_SEARCH
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        sampler = Sampler(cfg.dynamics, cfg.noise_level)
        trajectory, terms = self.sample_terms(prompts, self.sampler_steps(cfg.sample_steps), sampler)
        weights = reward_weights(self.reward)
        groups = len(prompts) // cfg.samples_per_prompt
        advantages = decoupled_advantages(terms, weights, groups, self.parallel, cfg.adv_clip)
        means = {name: values.mean().item() for name, values in terms.items()}
        per_term = {f"reward_{name}": mean for name, mean in means.items()} if len(terms) > 1 else {}
        reward = sum(weight * means[name] for name, weight in weights.items())
        blank = zero_std_groups(torch.stack(list(terms.values()), dim=1), groups)  # every term equal in the group
        return {"reward": reward, **per_term, "zero_std_groups": blank, **ppo_epochs(self, trajectory, advantages)}
