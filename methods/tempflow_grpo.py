"""`tempflow_grpo`: TempFlow-GRPO (He et al., "TempFlow-GRPO: When Timing Matters for GRPO in Flow Models", arXiv
2508.04324, ICLR 2026).

Flow-GRPO (methods/flow_grpo.py) credits every step of a chain with the chain's one terminal reward, though a step's
noise sways the reward the more the earlier the step. TempFlow-GRPO assigns the credit by construction:
  - trajectory branching with seed groups: the G samples of a prompt start from one x_T and follow the deterministic
    ODE to a branching step k, where each draws one SDE step (models/flow.py, dynamics `flow-sde`, or `cps`), then
    the ODE again to x_0. The G chains share x_k and differ only by step k's noise, so the group-relative advantage
    A_i = (R_i - mean(R)) / std(R) is a process reward of that step alone, and only that step is trained;
  - noise-aware weighting: the step's policy term is weighted by its exploration potential, the std of its
    transition, s_k = sigma_{t_k} sqrt(t_k - t_{k+1}) (the Flow-SDE's; CPS's own std with `dynamics = "cps"`),
    normalized by the mean over the chain's stochastic steps, w_k = s_k / mean_j s_j, so that early, noisy steps
    weigh more and the weights average 1:
  J(theta) = E [ 1/G sum_i w_k min(rho_k^i A_i, clip(rho_k^i, 1 - eps, 1 + eps) A_i) - beta KL_k^i ],
with rho_k^i and the closed-form KL to the frozen base at step k as Flow-GRPO's. Since w_k > 0,
w_k min(rho A, clip(rho) A) = min(rho (w_k A), clip(rho) (w_k A)): the weighted term is PPO's on the advantages w_k A.

Each iteration draws k uniformly from the chain's stochastic steps (every step but the last, to t = 0, which is the
deterministic Euler step); the shared prefix x_T -> x_k is run once per group, not once per sample.

Departures from the paper: one branching step per iteration, shared by every group (the paper spreads its branching
points over the steps and their groups); the weight multiplies the clipped policy term and not the KL; the options
are Flow-GRPO's (methods/toolkit/policy_gradient.py: FlowGRPOOptions: 10 training steps, KL weight 0.04, noise level
0.7), log-probabilities summed over pixels and advantages clipped to [-adv_clip, adv_clip] as flow_grpo's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.toolkit.policy_gradient import (
    FLOW_SDE_SEARCH,
    FlowGRPOOptions,
    PolicyGradientTrainer,
    group_normalized_advantages,
    ppo_usage,
    zero_std_groups,
)
from methods.trainer import chain_work
from models.flow import stochastic_step_std
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(FlowGRPOOptions):
    """TempFlow-GRPO's options: Flow-GRPO's (methods/toolkit/policy_gradient.py: FlowGRPOOptions) and the
    noise-aware weighting."""

    noise_weighting: bool = True
    """Weight the branching step's policy term by its transition's std over the chain's mean (False: weight 1, the
    branching alone)."""


def noise_weights(grid: torch.Tensor, dynamics: str, level: float) -> torch.Tensor:
    """w_k = s_k / mean_j s_j for the stochastic steps k of a flow chain over `grid` (its descending start times; the
    last step, to t = 0, is deterministic), s_k the std of step k's transition under `dynamics` at noise `level`."""
    times = [float(t) for t in grid] + [0.0]
    stds = torch.tensor(
        [stochastic_step_std(dynamics, level, times[k], times[k + 1]) for k in range(len(grid) - 1)],
        dtype=torch.float64,
    )
    return stds / stds.mean()


class TempFlowGRPO(PolicyGradientTrainer):
    name = "tempflow_grpo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = FLOW_SDE_SEARCH
    # two steps: the one branching step is step 0, so a small run's work is the same every iteration
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 2, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # expected over k uniform on the T - 1 stochastic steps: each group's ODE prefix of k steps, then every
        # sample's T - k steps, then the branching step trained
        images, steps, actions = chain_work(config, generator)
        prefix = (actions - 1) / 2
        usage = ppo_usage(config, images, steps, 1)
        return {**usage, "nfe": usage["nfe"] - (images - config.prompts_per_iter) * prefix}

    def step(self) -> dict[str, float]:
        cfg = self.config
        per_group = cfg.samples_per_prompt
        prompts = self.prompt_batch(cfg.prompts_per_iter, per_group)
        grid = self.policy.sampling_timesteps(self.sampler_steps(cfg.sample_steps))
        if len(grid) < 2:
            raise ValueError(f"{self.name} needs a stochastic step to branch at: set {self.name}.sample_steps >= 2")
        branch = int(torch.randint(0, len(grid) - 1, (1,), generator=self.generator))
        seeds = torch.randn((len(prompts) // per_group, *self.policy.latent_shape), generator=self.generator)
        shared = seeds.to(self.policy.device)
        if branch:
            with torch.no_grad():
                prefix = self.policy.sample(prompts[::per_group], grid, self.generator, initial=shared, until=branch)
            shared = prefix.latents[:, -1]
        sampler = Sampler(cfg.dynamics, cfg.noise_level, window=(0, 1))
        weight = float(noise_weights(grid, cfg.dynamics, cfg.noise_level)[branch]) if cfg.noise_weighting else 1.0
        rewards, summary = self.group_update(
            prompts,
            grid[branch:],
            sampler,
            lambda rewards, groups: weight * group_normalized_advantages(rewards, groups, cfg.adv_clip),
            initial=shared.repeat_interleave(per_group, dim=0),
            step_fraction=None,
        )
        groups = len(prompts) // per_group
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, groups),
            "branch_step": float(branch),
            "step_weight": weight,
            **summary,
        }
