"""`flow_grpo`: Flow-GRPO (Liu et al., "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv 2505.05470).

The rectified-flow sampler's ODE becomes an SDE with the same marginals (models/flow.py, dynamics `flow-sde`),
  dx = [v_theta + sigma_t^2 / (2 t) (x + (1 - t) v_theta)] dt + sigma_t dw,   sigma_t = a sqrt(t / (1 - t)),
whose Euler-Maruyama steps are Gaussian policies pi_theta(x_{t-dt} | x_t, c). For G samples of each prompt with
rewards R_1..R_G, the group-relative advantage A_i = (R_i - mean(R)) / std(R) is every step's, and
  J(theta) = E [ 1/G sum_i 1/T sum_t ( min(rho_t^i A_i, clip(rho_t^i, 1 - eps, 1 + eps) A_i) - beta KL_t^i ) ],
  rho_t^i = pi_theta(x_{t-1}^i | x_t^i, c) / pi_old(x_{t-1}^i | x_t^i, c),
with KL_t the closed form between the Gaussian steps of theta and the frozen reference,
||mu_theta - mu_ref||^2 / (2 sigma_t^2 dt), per dimension. Denoising reduction: training samples with T_train
steps (`sample_steps`, 10 as in the paper) while evaluation uses the model's default.

Departures from the paper: log-probabilities are the exact Gaussian log-densities summed over pixels, as ddpo's (the
reference implementation averages them, which rescales the clip range: its 1e-4 is not this one's); the sampler's last
step (to t = 0) is the deterministic Euler step, so it is not an action (models/flow.py); advantages are clipped to
[-adv_clip, adv_clip].

GRPO-Guard (Wang et al., arXiv 2510.22319), with `guard`: the ratio rho_t above becomes RatioNorm's regulated ratio,
log rho~_t = (log rho_t + ||mu_theta - mu_old||^2 / (2 s_t^2)) s_t with s_t the step's std, centred at 0 at every
step, and each step's clipped term is weighted by 1 / dt_t (methods/toolkit/policy_gradient.py: guarded_log_ratio).
The regulated log-ratio is s_t times smaller than the plain one, so it wants its own clip range (the grpo-family
suite's `flow_grpo/guard` sets it); the paper's runs drop the KL (beta = 0), a config choice here.

Flow-GRPO-Fast (the reference repository's `train_sd3_fast.py`, its `sde_window_size` and `sde_window_range`), with
`sde_window` w > 0: each iteration draws the window's first step l uniformly from [0, sde_window_steps - w], the
chains take the SDE's steps on [l, l + w) and the ODE's deterministic Euler steps elsewhere, and only the window's
steps are actions and trained (the objective's 1/T sum over t becomes 1/w over the window). The window stays among
the stochastic steps (never the last one, to t = 0).

Coefficients-preserving sampling (Wang and Yu, arXiv 2509.05952; its reference repository is Flow-GRPO with one more
sampler), with `dynamics = "cps"`: the chains' stochastic steps are CPS's Gaussians,
x_{t-dt} ~ N((1 - s) x0_hat + s cos(eta pi / 2) eps_hat, (s sin(eta pi / 2))^2), s = t - dt, eta = `noise_level`
(models/flow.py); the objective is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import option
from methods.toolkit.policy_gradient import (
    FLOW_SDE_SEARCH,
    FlowGRPOOptions,
    PolicyGradientTrainer,
    ppo_usage,
    zero_std_groups,
)
from methods.trainer import chain_work
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(FlowGRPOOptions):
    """Flow-GRPO's options: the policy-gradient ones at the paper's training steps and KL weight, and the SDE's noise
    level (methods/toolkit/policy_gradient.py: FlowGRPOOptions), the Fast window and GRPO-Guard."""

    sde_window: int = option(0, at_least=0, added=True)
    """Flow-GRPO-Fast's w: the SDE's steps of each chain, at a random place among its first `sde_window_steps`, the
    only ones trained (the ODE's elsewhere); 0: the SDE on every step (Flow-GRPO)."""
    sde_window_steps: int = option(5, at_least=1, added=True)
    """The first steps of the chain the Fast window lies within (the reference's sde_window_range (0, 5))."""
    guard: bool = option(False, added=True)
    """GRPO-Guard: RatioNorm's regulated ratio and 1 / dt step weights in the PPO update."""

    def __post_init__(self):
        super().__post_init__()
        if self.sde_window > self.sde_window_steps:
            raise ValueError(
                f"flow_grpo.sde_window ({self.sde_window}) must fit in flow_grpo.sde_window_steps "
                f"({self.sde_window_steps})"
            )


def sde_window(steps: int, config: Config) -> tuple[int, int]:
    """(w, the largest first step l) of Flow-GRPO-Fast's window on chains of `steps` steps, kept among the chain's
    `steps - 1` stochastic steps; (0, 0) without it."""
    if config.sde_window == 0:
        return 0, 0
    size = min(config.sde_window, steps - 1)
    return size, max(min(config.sde_window_steps, steps - 1) - size, 0)


class FlowGRPO(PolicyGradientTrainer):
    name = "flow_grpo"
    # 2: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "2"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = FLOW_SDE_SEARCH
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        images, steps, actions = chain_work(config, generator)
        # every stochastic step is trained: the chain's, or the Fast window's
        return ppo_usage(config, images, steps, sde_window(steps, config)[0] or actions)

    def step(self) -> dict[str, float]:
        cfg = self.config
        steps = self.sampler_steps(cfg.sample_steps)
        span, window = None, {}
        size, last_start = sde_window(steps, cfg)
        if size:  # Flow-GRPO-Fast: the SDE on a window drawn for this iteration, the ODE elsewhere
            start = int(torch.randint(last_start + 1, (1,), generator=self.generator))
            span, window = (start, start + size), {"window_start": float(start)}
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        sampler = Sampler(cfg.dynamics, cfg.noise_level, window=span)
        rewards, summary = self.group_update(prompts, steps, sampler, guard=cfg.guard)
        groups = len(prompts) // cfg.samples_per_prompt
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, groups),
            **window,
            **summary,
        }
