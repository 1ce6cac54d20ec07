"""`rocm`: direct reward optimization on a consistency model with f-divergence regularization
(Shekhar and Zhang, "ROCM: RLHF on consistency models", arXiv 2503.06171).

The multistep sampler is a chain of Gaussian transitions pi_theta(x_{s+1} | x_s, c) = N(mu_theta(x_s), sigma_s^2 I);
written with the reparameterization trick x_{s+1} = mu_theta(x_s) + sigma_s * eps_s, the image is a differentiable
function of theta and the noise, so the objective is minimised by first-order gradients through every step:
  L(theta) = E_{c, eps} [ -r(x_0, c) + beta * sum_s D_f( pi_theta(. | x_s, c) || pi_ref(. | x_s, c) ) ],
where pi_ref is the frozen starting model, x_s runs along the policy's own trajectory, and D_f is one of
methods/toolkit/divergences.py's f-divergences between the two Gaussians (per dimension, averaged over dimensions).
Gradients flow through the states x_s too (the full pathwise gradient of L), including through the frozen
reference network's input.

The divergence is summed over the chain's stochastic steps, the intermediate steps the paper regularizes:
the consistency sampler's last step is deterministic (the image is its x0 prediction) and has none.
Departures from the paper (which has no public code): divergences without a closed form (Jensen-Shannon) use the mixture
Monte Carlo estimator with `mc_samples` draws; `divergence = "none"` (or beta = 0) is plain reward backpropagation
through the chain, as in DRaFT / AlignProp. The method runs on any family whose sampler is differentiable, consistency
first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Choice, Interval, Options, option
from methods.toolkit.divergences import DIVERGENCES, step_divergence
from methods.trainer import Trainer, chain_work, make_optimizer
from models.sampler import Sampler

NO_DIVERGENCE = "none"


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(4, at_least=1)
    """Chains per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of each chain, all back-propagated through; None: the model's default (4 consistency steps)."""
    eta: float = option(1.0, at_least=0)
    """DDIM's stochasticity on the diffusion model; > 0 with a divergence, since a deterministic step has none
    (the consistency sampler's noise is its own)."""
    divergence: str = "kl"
    """Regularizer between policy and reference steps: none, kl, reverse_kl, js, hellinger, chi2 or tv."""
    beta: float = option(0.01, at_least=0)
    """Weight of the divergence summed over steps."""
    mc_samples: int = option(8, at_least=1)
    """Monte Carlo draws per dimension for a divergence without a closed form."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""
    gradient_checkpointing: bool = False
    """Recompute each step's activations in the backward pass: less memory, one more forward per step."""

    def __post_init__(self):
        super().__post_init__()
        if self.divergence != NO_DIVERGENCE and self.divergence not in DIVERGENCES:
            raise ValueError(
                f"rocm.divergence must be one of {NO_DIVERGENCE}, {', '.join(DIVERGENCES)}; got {self.divergence!r}"
            )
        if self.regularized and self.eta <= 0:
            raise ValueError("rocm.eta must be > 0 with a divergence: a deterministic step has no density")

    @property
    def regularized(self) -> bool:
        return self.divergence != NO_DIVERGENCE and self.beta > 0


def regularized_loss(rewards: torch.Tensor, divergences: list[torch.Tensor], beta: float) -> torch.Tensor:
    """-mean(r) + beta * sum over steps of mean divergence. rewards: (B,); divergences: S tensors (B,)."""
    penalty = torch.stack(divergences).sum(dim=0).mean() if divergences else rewards.new_zeros(())
    return -rewards.mean() + beta * penalty


class ROCM(Trainer):
    name = "rocm"
    version = "2"  # 2: no divergence at the consistency sampler's deterministic last step
    Config = Config
    needs_differentiable_reward = True
    families = ("consistency", "diffusion")
    compared_on = ("consistency",)  # the paper's family; ROCM on a diffusion model is the scenes world's
    search_space = {
        "learning_rate": Interval(1e-6, 1e-4, log=True),
        "beta": Interval(1e-4, 0.1, log=True),
        "divergence": Choice(("kl", "reverse_kl", "chi2", "js", "hellinger", "tv")),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # forward + backward through every step, and the same for the reference (its backward carries the
        # divergence's gradient into the states); checkpointing re-runs the policy's forwards
        images, steps, actions = chain_work(config, generator)
        policy = images * steps * (4 if config.gradient_checkpointing else 3)
        reference = images * actions * 3 if config.regularized else 0
        return {"nfe": policy + reference, "reward_queries": images, "samples": images}

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy() if config.regularized else None

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        trajectory = self.policy.sample(
            prompts,
            self.sampler_steps(cfg.sample_steps),
            self.generator,
            Sampler(noise=cfg.eta),
            grad=True,
            checkpoint=cfg.gradient_checkpointing,
        )
        rewards = self.reward(trajectory.images, prompts)
        divergences = []
        if self.reference is not None:
            for s in trajectory.stochastic_steps:
                std = float(trajectory.stds[s])
                reference_mean = self.reference.step_mean(trajectory, s)
                divergences.append(
                    step_divergence(
                        cfg.divergence, trajectory.means[:, s], std, reference_mean, std, cfg.mc_samples, self.generator
                    )
                )
        loss = regularized_loss(rewards, divergences, cfg.beta)
        self.descend(loss, cfg.max_grad_norm)
        stats = {"reward": rewards.mean().item(), "loss": loss.item()}
        if divergences:
            stats["divergence"] = torch.stack(divergences).sum(dim=0).mean().item()
        return stats
