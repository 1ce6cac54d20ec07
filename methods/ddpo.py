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

import torch

from methods.options import Options, option
from methods.toolkit.policy_gradient import (
    STEPS_PER_CALL,
    check_sampling_pass_reuse,
    group_normalized_advantages,
    ppo_epochs,
    ppo_usage,
    steps_trained,
)
from methods.trainer import Trainer, chain_work, make_optimizer


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """Trajectories per prompt; advantages are normalised within each prompt's group."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of each chain (the MDP's horizon for ddpo); None: the model's default (20 DDIM steps,
    4 consistency steps)."""
    eta: float = option(1.0, above=0)
    """DDIM's stochasticity on the diffusion model; > 0 is required so every step has a density (the
    consistency sampler's noise is its own)."""
    inner_epochs: int = option(1, at_least=1)
    """Passes of PPO updates over each iteration's trajectories."""
    minibatch: int = option(16, at_least=1)
    """Trajectories per optimizer step."""
    steps_per_call: int = option(STEPS_PER_CALL, at_least=1)
    """Trained steps of a minibatch whose re-evaluation is batched into one network call (steps_per_call x minibatch
    states); lower it to bound memory, 1: a call per step. Batching only reorders float sums."""
    reuse_sampling_pass: bool = option(False, added=True)
    """The first optimizer step of an iteration differentiates the sampling pass (each step's mean, the states as
    constants) instead of re-evaluating its steps: the same gradient, as rho = 1 there, a forward fewer per trained
    step of the first epoch, every chain's activations held until then; needs one minibatch of every chain."""
    step_fraction: float = option(1.0, above=0, at_most=1)
    """Fraction of the chain's stochastic steps (chosen at random per minibatch) trained on."""
    clip_range: float = option(0.2, above=0)
    """PPO ratio clipping epsilon."""
    adv_clip: float = option(5.0, above=0)
    """Normalised advantages are clipped to [-adv_clip, adv_clip]."""
    kl_coef: float = option(0.0, at_least=0)
    """Weight of the per-step KL to the frozen base model (0 disables it and its reference passes)."""
    learning_rate: float | None = option(None, above=0)
    """AdamW learning rate; None: the model's (LEARNING_RATES)."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        check_sampling_pass_reuse(self)


# Measured on `digit`: on the 4-step consistency chain, 3e-5 clips 26-34% of the PPO ratios and the reward
# drifts down; 1e-5 clips about 5% and the unseen reward climbs steadily. The 20-step flow chain takes the
# diffusion chain's rate.
LEARNING_RATES = {"diffusion": 3e-5, "consistency": 1e-5, "flow": 3e-5}


class DDPO(Trainer):
    name = "ddpo"
    # 2: the KL penalty is per dimension (methods/toolkit/divergences.py), sample_steps follows the model;
    # 3: only stochastic steps are actions (a consistency model's last step is deterministic);
    # 4: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "4"
    Config = Config
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, actions = chain_work(config, generator)
        return ppo_usage(config, images, steps, steps_trained(config.step_fraction, actions))

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        learning_rate = LEARNING_RATES[policy.family] if config.learning_rate is None else config.learning_rate
        self.optimizer = make_optimizer(policy.trainable_parameters(), learning_rate)
        self.reference = policy.frozen_copy() if config.kl_coef > 0 else None

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            trajectory = self.policy.sample(
                prompts,
                self.sampler_steps(cfg.sample_steps),
                self.generator,
                eta=cfg.eta,
                score_graph=cfg.reuse_sampling_pass,
            )
            rewards = self.reward(trajectory.images, prompts).float().cpu()
        if not trajectory.stochastic_steps:
            raise ValueError(
                "ddpo needs a stochastic sampling step to train on; a 1-step consistency sampler "
                "has none (set ddpo.sample_steps >= 2)"
            )
        advantages = group_normalized_advantages(rewards, len(prompts) // cfg.samples_per_prompt, cfg.adv_clip)
        summary = ppo_epochs(self, trajectory, advantages, cfg.step_fraction)
        return {"reward": rewards.mean().item(), **summary}
