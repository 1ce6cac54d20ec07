"""`orw_cfm_w2`: online reward-weighted conditional flow matching with a Wasserstein-2 regularizer (Fan et al.,
"Online Reward-Weighted Fine-Tuning of Flow Matching with Wasserstein Regularization", ICLR 2025, arXiv 2502.06061).

Each iteration draws a batch x1 ~ p_theta (the current model, online) for train prompts c, weights every sample
by its reward, and takes gradient steps on
  L(theta) = sum_i w_i E_{t, eps} ||v_theta(x_t^i, t, c_i) - (eps - x1^i)||^2
             + alpha * mean_i E_{t, eps} ||v_theta(x_t^i, t, c_i) - v_ref(x_t^i, t, c_i)||^2,
with x_t^i = (1 - t) x1^i + t eps on the straight path (models/flow.py) and weights normalized over the batch
(sum_i w_i = 1). The first term is flow matching on the reward-tilted sample distribution, whose fixed point is
p_ref(x) exp(r(x) / tau) (up to the regularizer); the second is the tractable upper bound on W2(p_theta, p_ref)
(the velocity gap integrated along the path) that keeps the tilted model near the base and its diversity
alive: with alpha = 0 repeated tilting concentrates on the reward's mode. Neither term needs reward gradients
or likelihoods, so any reward works, `compress` included.

Departures from the paper (whose public code is incomplete): the weights are exp(z / tau) with z the rewards
standardized within the batch, so that one tau means the same tilt on every reward scale (the paper divides
raw rewards by a per-task tau); linear and rank weightings are options; the W2 term is evaluated on the same
path points as the flow-matching term. The method runs on any family with a flow-matching loss: flow models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.weightings import WEIGHTINGS, reward_weights
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=1)
    """Samples per prompt drawn from the current model each iteration."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler (Euler) steps to draw them; None: the model's default (20)."""
    weighting: str = "exp"
    """How rewards become weights: exp (exp(z / tau)), linear (z - min z), rank, or uniform (plain flow matching)."""
    tau: float = option(1.0, above=0)
    """Temperature of the exp weighting, in units of the batch's reward std."""
    alpha: float = option(1.0, at_least=0)
    """Weight of the W2 bound E ||v_theta - v_ref||^2 (0: no regularization, and no reference passes)."""
    updates_per_iter: int = option(4, at_least=1)
    """Gradient steps on each batch, each with fresh path times and noise."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"orw_cfm_w2.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")


def orw_loss(
    prediction: torch.Tensor, target: torch.Tensor, reference: torch.Tensor | None, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted flow-matching loss plus alpha times the W2 bound, and the bound itself.

    prediction, target, reference: (B, C, H, W) velocities (reference None when alpha = 0); weights: (B,).
    Squared errors are averaged over pixels, as the plain flow-matching loss is."""
    fit = ((prediction - target) ** 2).flatten(1).mean(dim=1)
    gap = ((prediction - reference) ** 2).flatten(1).mean(dim=1).mean() if reference is not None else fit.new_zeros(())
    return (weights.to(fit.device) * fit).sum() + alpha * gap, gap


class ORWCFMW2(Trainer):
    name = "orw_cfm_w2"
    version = "1"
    Config = Config
    families = ("flow",)
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "tau": Interval(0.1, 10.0, log=True),
        "alpha": Interval(0.01, 10.0, log=True),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "updates_per_iter": 2}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # flow matching on every sample (forward + backward), plus the reference's forward for the W2 bound
        images, steps, _ = chain_work(config, generator)
        per_update = images * (generator.loss_nfe + (1 if config.alpha > 0 else 0))
        return {
            "nfe": images * steps + config.updates_per_iter * per_update,
            "reward_queries": images,
            "samples": images,
        }

    policy: FlowMatchingPolicy

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy() if config.alpha > 0 else None

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            images = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator).images
            rewards = self.reward(images, prompts).float().cpu()
        # normalized over the whole batch of all processes; each process's gradient is averaged with the others'
        # so its share of the weights is scaled back up by their number
        weights = self.parallel.local(reward_weights(self.parallel.gather(rewards), cfg.weighting, cfg.tau))
        weights = weights * self.parallel.world_size
        for _ in range(cfg.updates_per_iter):
            x_t, t, target = self.policy.flow_matching_pair(images, self.generator)
            prediction = self.policy.velocity(x_t, t, prompts)
            reference = None
            if self.reference is not None:
                with torch.no_grad():
                    reference = self.reference.velocity(x_t, t, prompts)
            loss, gap = orw_loss(prediction, target, reference, weights, cfg.alpha)
            self.descend(loss, cfg.max_grad_norm)
        return {
            "reward": rewards.mean().item(),
            "loss": loss.item(),
            "w2_bound": gap.item(),
            "effective_samples": (1 / (weights**2).sum()).item(),
        }
