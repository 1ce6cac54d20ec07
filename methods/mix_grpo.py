"""`mix_grpo`: MixGRPO (Li et al., "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE", arXiv
2507.21802).

Flow-GRPO's policy gradient (methods/flow_grpo.py) with the SDE confined to a window: of the T sampler steps, the w
steps [l, l + w) are the SDE's Euler-Maruyama steps (models/flow.py, dynamics `flow-sde`), the others the ODE's
deterministic Euler steps, so only the window's steps are actions and only they are trained:
  J(theta) = E [ 1/G sum_i 1/w sum_{t in [l, l + w)} min(rho_t^i A_i, clip(rho_t^i, 1 - eps, 1 + eps) A_i) ],
with A_i the group-relative advantage of the sample's reward. The window slides from high noise to low as training
goes: l = min(stride * floor(k / shift_interval), T - 1 - w) at iteration k (the paper's progressive sliding
window, held at its last position), so early iterations shape the image's layout and later ones its detail, and
each iteration backpropagates through w steps instead of all of them.

Departures from the paper: log-probabilities are summed over pixels (as ddpo's and flow_grpo's); the window stops at
the last stochastic step (the sampler's last step, to t = 0, is the deterministic Euler step); the shift interval is
counted in this suite's iterations (scaled to its budgets, not the paper's 25).

MixGRPO-Flash, with `flash_steps` k > 0: the steps after the window are not trained, so the ODE may cross them
faster. The chain keeps the grid up to the window's end, t_0 .. t_{l+w}, and then takes k steps over k points of the
remaining grid, evenly spaced from t_{l+w} (the first of them), to t = 0: k network calls instead of T - l - w.
Departure: the paper takes these steps with a second-order solver (DPM-Solver++); here they are the ODE's Euler steps
on the coarser grid (the sampler's steps are stateless, and a multistep solver would carry the previous step's
prediction), so at equal k its images are a first-order solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import option
from methods.toolkit.policy_gradient import (
    FLOW_SDE_SEARCH,
    FlowSDEOptions,
    PolicyGradientTrainer,
    ppo_usage,
    zero_std_groups,
)
from methods.trainer import chain_work
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(FlowSDEOptions):
    """MixGRPO's options: the policy-gradient ones (methods/toolkit/policy_gradient.py: FlowSDEOptions, no KL term
    as in the paper), the sliding window, the SDE's noise level inside it and Flash's steps after it."""

    sample_steps: int | None = option(None, at_least=2)
    """T: sampler steps of the training chains, at least 2 (a flow chain's last step is deterministic, so one step has
    no action); None: the model's default."""
    window: int = option(4, at_least=1)
    """w: the SDE steps of each chain, the only ones trained (a chain of T steps has at most T - 1: a longer window is
    the whole chain's stochastic steps)."""
    shift_interval: int = option(10, at_least=1)
    """Iterations between two moves of the window."""
    stride: int = option(1, at_least=1)
    """Steps the window moves at each shift."""
    flash_steps: int = option(0, at_least=0, added=True)
    """MixGRPO-Flash: the ODE steps after the window, over evenly spaced points of the remaining grid; 0: every step
    of the grid (MixGRPO)."""


def window_size(steps: int, config: Config) -> int:
    """w on chains of `steps` steps: at most their `steps - 1` stochastic steps."""
    return min(config.window, steps - 1)


def window_start(iteration: int, steps: int, config: Config) -> int:
    """l at iteration k (from 0) of chains of `steps` steps: the window slides by `stride` every `shift_interval`
    iterations and stops where its last step is the chain's last stochastic one."""
    return min(config.stride * (iteration // config.shift_interval), steps - 1 - window_size(steps, config))


def flash_grid(grid: torch.Tensor, end: int, flash_steps: int) -> torch.Tensor:
    """MixGRPO-Flash's grid: `grid` (the chain's descending start times) up to the window's `end` (exclusive), then
    min(flash_steps, the rest) of the remaining points, evenly spaced and starting at grid[end]."""
    rest = len(grid) - end
    if flash_steps == 0 or rest <= flash_steps:
        return grid
    kept = [end + i * rest // flash_steps for i in range(flash_steps)]
    return torch.cat([grid[:end], grid[kept]])


class MixGRPO(PolicyGradientTrainer):
    name = "mix_grpo"
    # 2: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "2"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = FLOW_SDE_SEARCH
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 4, "window": 2, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, _ = chain_work(config, generator)
        window = window_size(steps, config)
        if config.flash_steps:  # the first iteration's window starts at step 0; later ones cost at most as much
            steps = window + min(config.flash_steps, steps - window)
        return ppo_usage(config, images, steps, window)  # the window's steps are trained

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.iteration = 0

    def step(self) -> dict[str, float]:
        cfg = self.config
        steps = self.sampler_steps(cfg.sample_steps)
        start, window = window_start(self.iteration, steps, cfg), window_size(steps, cfg)
        grid = flash_grid(self.policy.sampling_timesteps(steps), start + window, cfg.flash_steps)
        sampler = Sampler(cfg.dynamics, cfg.noise_level, window=(start, start + window))
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        rewards, summary = self.group_update(prompts, grid, sampler)
        groups = len(prompts) // cfg.samples_per_prompt
        self.iteration += 1
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, groups),
            "window_start": float(start),
            **summary,
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.iteration = state["iteration"]
