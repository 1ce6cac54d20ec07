"""`flow_dppo`: Flow-DPPO (arXiv 2606.11025; its reference implementation is UniRL's FlowDPPO), DPPO's trust region
(Qi et al., "Rethinking the Trust Region in LLM Reinforcement Learning", arXiv 2602.04879) on Flow-GRPO's SDE.

Flow-GRPO (methods/flow_grpo.py) bounds each update with PPO's clipped ratio, a proxy for how far the policy moved
from the one that sampled the chains. A flow SDE step is Gaussian, so that distance is known exactly: between the
step's Gaussians under theta and under the sampling policy (same std s_t),
  KL_t^i = ||mu_theta(x_t^i) - mu_old(x_t^i)||^2 / (2 s_t^2 D)   (per dimension, D the latent's size).
Flow-DPPO drops the clip and masks instead: with the group-relative advantages A_i of Flow-GRPO,
  J(theta) = E [ 1/G sum_i 1/T sum_t M_t^i rho_t^i A_i - beta KL_ref ],
  M_t^i = 0 where KL_t^i > delta and the ratio has already moved the way A_i pushes it (rho > 1 with A > 0,
  rho < 1 with A < 0), 1 elsewhere,
so a step may always move back towards the sampling policy, and one outside the trust region stops being pushed
further out (methods/toolkit/policy_gradient.py: KLMask). The mask carries no gradient; a masked term keeps its
place in the mean.

Defaults: the reference implementation's, delta = 1e-5 per dimension and no KL to the reference (beta = 0); the
rest as Flow-GRPO's (10 training steps, the flow SDE at noise level 0.7, or CPS with `dynamics = "cps"`).
Departures: log-probabilities are the exact Gaussian log-densities summed over pixels (the ratio's size does not
enter the mask, only its side of 1); the sampler's last step (to t = 0) is deterministic, so it is not an action.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.options import Interval, option
from methods.toolkit.policy_gradient import (
    FlowSDEDynamics,
    KLMask,
    KLPenaltyOptions,
    PolicyGradientOptions,
    PolicyGradientTrainer,
    zero_std_groups,
)
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(FlowSDEDynamics, KLPenaltyOptions, PolicyGradientOptions):
    """Flow-DPPO's options: the policy-gradient ones (methods/toolkit/policy_gradient.py) without PPO's clip, the
    flow SDE's dynamics, the KL penalty (its beta, kl_coef, 0 as in the reference) and the trust region's delta."""

    sample_steps: int | None = option(10, at_least=2)
    """T_train: sampler steps of the training chains (evaluation uses the model's default); None: the model's
    default."""
    kl_threshold: float = option(1e-5, above=0)
    """delta: the per-dimension KL from the sampling policy's step beyond which a term pushed further out is
    masked."""

    @property
    def trust_region(self) -> KLMask:
        return KLMask(self.kl_threshold)


class FlowDPPO(PolicyGradientTrainer):
    name = "flow_dppo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "kl_threshold": Interval(1e-7, 1e-3, log=True),
        "kl_coef": Interval(0.0, 0.2),
        "noise_level": Interval(0.3, 1.0),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        sampler = Sampler(cfg.dynamics, cfg.noise_level)
        rewards, summary = self.group_update(prompts, self.sampler_steps(cfg.sample_steps), sampler)
        groups = len(prompts) // cfg.samples_per_prompt
        return {"reward": rewards.mean().item(), "zero_std_groups": zero_std_groups(rewards, groups), **summary}
