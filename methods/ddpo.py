"""`ddpo`: Denoising Diffusion Policy Optimization (Black et al., "Training Diffusion Models with
Reinforcement Learning", ICLR 2024, arXiv 2305.13301), the DDPO_IS (PPO) variant.

The denoising chain is an MDP whose actions are the sampler's stochastic Gaussian steps
x_{s+1} ~ pi_theta(. | x_s, c) (every DDIM step with eta > 0; every consistency or flow step but the
deterministic last one, as in RLCM, Oertell et al. 2024, and Flow-GRPO), so for trajectories sampled from
the old policy with advantage A (the terminal reward, normalised):
  L(theta) = E_{s, traj} [ max(-A * rho_s, -A * clip(rho_s, 1 - eps, 1 + eps)) ] + kl_coef * E [ KL_s ],
  rho_s = pi_theta(x_{s+1} | x_s, c) / pi_old(x_{s+1} | x_s, c),
with KL_s the closed-form KL between the step's Gaussian transitions under theta and the frozen base
model, per dimension as methods/toolkit/divergences.py normalizes it (an optional regulariser; DDPO itself has none).
Departures from the paper: log-probabilities are the exact Gaussian log-densities, summed over pixels
(the reference code averages them, which rescales the clip range; `clip_range` is set for sums);
advantages are normalised per prompt within each iteration's batch (the paper keeps a per-prompt
running buffer across iterations; with K samples of every prompt in one batch the two coincide in spirit
and this one needs no state). As in the paper, one optimizer step accumulates over all chosen steps of a minibatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.options import Interval, option
from methods.toolkit.policy_gradient import (
    PolicyGradientTrainer,
    PPOOptions,
    ppo_usage,
    steps_trained,
    zero_std_groups,
)
from methods.trainer import chain_work
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(PPOOptions):
    """DDPO's options: the policy-gradient ones (methods/toolkit/policy_gradient.py: PPOOptions), DDIM's eta and the
    timestep subsampling; the learning rate follows the model family unless given."""

    eta: float = option(1.0, above=0)
    """DDIM's stochasticity on the diffusion model; > 0 is required so every step has a density (the
    consistency sampler's noise is its own)."""
    step_fraction: float = option(1.0, above=0, at_most=1)
    """Fraction of the chain's stochastic steps (chosen at random per minibatch) trained on."""
    learning_rate: float | None = option(None, above=0)
    """AdamW learning rate; None: the model's (LEARNING_RATES)."""


# Measured on `digit`: on the 4-step consistency chain, 3e-5 clips 26-34% of the PPO ratios and the reward
# drifts down; 1e-5 clips about 5% and the unseen reward climbs steadily. The 20-step flow chain takes the
# diffusion chain's rate.
LEARNING_RATES = {"diffusion": 3e-5, "consistency": 1e-5, "flow": 3e-5}


class DDPO(PolicyGradientTrainer):
    name = "ddpo"
    # 2: the KL penalty is per dimension (methods/toolkit/divergences.py), sample_steps follows the model;
    # 3: only stochastic steps are actions (a consistency model's last step is deterministic);
    # 4: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "4"
    Config = Config
    config: Config
    search_space = {
        "learning_rate": Interval(1e-6, 1e-3, log=True),
        "clip_range": Interval(1e-4, 0.5, log=True),
        "kl_coef": Interval(0.0, 0.1),
    }
    model_defaults = {"learning_rate": LEARNING_RATES}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, actions = chain_work(config, generator)
        return ppo_usage(config, images, steps, steps_trained(config.step_fraction, actions))

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        learning_rate = LEARNING_RATES[policy.family] if config.learning_rate is None else config.learning_rate
        super().__init__(policy, reward, prompts, config, seed, learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        steps, sampler = self.sampler_steps(cfg.sample_steps), Sampler(noise=cfg.eta)
        rewards, summary = self.group_update(prompts, steps, sampler, step_fraction=cfg.step_fraction)
        groups = len(prompts) // cfg.samples_per_prompt
        return {"reward": rewards.mean().item(), "zero_std_groups": zero_std_groups(rewards, groups), **summary}
