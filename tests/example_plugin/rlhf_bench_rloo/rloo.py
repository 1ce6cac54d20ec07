"""`rloo`: REINFORCE with a leave-one-out baseline (Kool et al., "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
ICLR 2019 workshop; Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs", arXiv 2402.14740), on the sampling chain of a diffusion, consistency or flow model.

For K samples of a prompt with rewards R_1..R_K, each sample's baseline is the mean reward of the other K - 1, so its
advantage is unbiased and needs no critic,
  A_i = R_i - 1/(K - 1) sum_{j != i} R_j = K / (K - 1) (R_i - mean(R)),
and every stochastic step of the chain takes its sample's advantage in the clipped surrogate of
methods/toolkit/policy_gradient.py (with one inner epoch the ratio is 1 and the gradient is REINFORCE's).
Departure: advantages are divided by the batch's reward std and clipped to [-adv_clip, adv_clip], so one learning rate
serves rewards of every scale (RLOO itself leaves them in the reward's units).

This package is the example of docs/extending.md: a method from outside the repository, declared as an entry point in
the group `rlhf_bench.methods`, and on the suite's shared policy-gradient contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, option
from methods.toolkit.policy_gradient import PolicyGradientTrainer, PPOOptions, ppo_epochs
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(PPOOptions):
    """RLOO's options: the policy-gradient ones (methods/toolkit/policy_gradient.py: PPOOptions) and DDIM's eta."""

    eta: float = option(1.0, above=0)
    """The stochastic sampler's noise level: DDIM's eta on a diffusion or flow model (a consistency sampler's noise is
    its own)."""


def leave_one_out_advantages(rewards: torch.Tensor, groups: int, clip: float) -> torch.Tensor:
    """A_i = R_i - the mean of its group's other rewards, for a group-major (G * K,) vector, divided by the batch's
    reward std and clipped to [-clip, clip]: (G * K,)."""
    grouped = rewards.view(groups, -1)
    size = grouped.shape[1]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (size - 1)
    advantages = (grouped - others).flatten()
    return (advantages / (rewards.std(unbiased=False) + 1e-6)).clamp(-clip, clip)


class RLOO(PolicyGradientTrainer):
    name = "rloo"
    version = "1"
    Config = Config
    config: Config
    search_space = {"learning_rate": Interval(3e-6, 3e-4, log=True), "clip_range": Interval(0.02, 0.5, log=True)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        trajectory, rewards = self.sample_scored(prompts, self.sampler_steps(cfg.sample_steps), Sampler(noise=cfg.eta))
        advantages = leave_one_out_advantages(rewards, len(prompts) // cfg.samples_per_prompt, cfg.adv_clip)
        summary = ppo_epochs(self, trajectory, advantages)
        return {"reward": rewards.mean().item(), **summary}
