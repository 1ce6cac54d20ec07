"""`dance_grpo`: DanceGRPO (Xue et al., "DanceGRPO: Unleashing GRPO on Visual Generation", arXiv 2505.07818).

GRPO on the sampling chain of a rectified flow or a diffusion model. Each step of the chain is a Gaussian policy: on
a flow model the Euler-Maruyama step of the marginal-preserving SDE (models/flow.py, dynamics `dance-sde`)
  dx = [v_theta + eta^2 / (2 t) (x + (1 - t) v_theta)] dt + eta dw   (a constant noise level eta),
on a diffusion model DDIM's stochastic step (DDPM's at eta = 1). Its two departures from Flow-GRPO's recipe:
  - shared initial noise: the G samples of a prompt start from one x_T, so their rewards differ only by the
    sampler's noise on the way, and the group-relative advantage A_i = (R_i - mean(R)) / std(R) credits that;
  - timestep selection: each update trains a random fraction tau of the chain's stochastic steps,
  J(theta) = E [ 1/G sum_i 1/|S| sum_{t in S} min(rho_t^i A_i, clip(rho_t^i, 1 - eps, 1 + eps) A_i) ],  |S| = tau T,
without a KL term (kl_coef, 0 by default, adds ddpo's).

Departures from the paper: log-probabilities are summed over pixels (as ddpo's); the flow sampler's last step (to
t = 0) is the deterministic Euler step; advantages are clipped to [-adv_clip, adv_clip]; one reward, not the paper's
several with their advantages summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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

# eta per family: the flow SDE's noise level, DDIM's stochasticity (DDPM's sampler at 1)
NOISE_LEVELS = {"flow": 0.3, "diffusion": 1.0}
DYNAMICS = {"flow": "dance-sde", "diffusion": "ddim"}


@dataclass(frozen=True)
class Config(PPOOptions):
    """DanceGRPO's options: the policy-gradient ones (methods/toolkit/policy_gradient.py: PPOOptions, without a KL term
    as in the paper), the noise level and the timestep selection; a group's samples share their initial noise."""

    sample_steps: int | None = option(None, at_least=2)
    """T: sampler steps of the training chains, at least 2 (a flow chain's last step is deterministic, so one step has
    no action); None: the model's default."""
    noise_level: float | None = option(None, above=0)
    """eta: the flow SDE's constant noise level, or DDIM's eta on a diffusion model; None: NOISE_LEVELS."""
    timestep_fraction: float = option(0.6, above=0, at_most=1)
    """tau: the fraction of each chain's stochastic steps (drawn at random per minibatch) trained on."""


class DanceGRPO(PolicyGradientTrainer):
    name = "dance_grpo"
    # 2: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "2"
    Config = Config
    config: Config
    families = ("flow", "diffusion")
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "noise_level": Interval(0.1, 1.0, log=True),
        "clip_range": Interval(0.02, 0.5, log=True),
    }
    model_defaults = {"noise_level": NOISE_LEVELS}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, actions = chain_work(config, generator)
        return ppo_usage(config, images, steps, steps_trained(config.timestep_fraction, actions))

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.noise_level = NOISE_LEVELS[policy.family] if config.noise_level is None else config.noise_level

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        groups = len(prompts) // cfg.samples_per_prompt
        shared = torch.randn((groups, *self.policy.latent_shape), generator=self.generator)
        rewards, summary = self.group_update(
            prompts,
            self.sampler_steps(cfg.sample_steps),
            Sampler(DYNAMICS[self.policy.family], self.noise_level),
            initial=shared.repeat_interleave(cfg.samples_per_prompt, dim=0),
            step_fraction=cfg.timestep_fraction,
        )
        return {"reward": rewards.mean().item(), "zero_std_groups": zero_std_groups(rewards, groups), **summary}
