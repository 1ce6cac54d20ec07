"""`elbo`: the ELBO recipe (Choi et al., "Rethinking the Design Space of Reinforcement Learning for Diffusion Models:
On the Importance of Likelihood Estimation Beyond Loss Design", arXiv 2602.04663, ICML 2026; code:
jaemoo-choi/rethinking-diffusion-rl).

The paper separates three choices that methods bundle: the policy-gradient loss, the likelihood estimator and the
sampler, and finds the estimator to dominate: the likelihood of the final sample alone, estimated by an evidence
lower bound at one point of the forward path, trains faster and steadier than the chain's per-step likelihoods, and
lets the rollouts use the deterministic ODE sampler. For a sample x_0 of prompt c, a point x_t = (1 - t) x_0 + t eps
(t uniform) and the clean image the model predicts there, x0_hat = x_t - t v_theta(x_t, t, c), the estimator is
  ELBO_theta(x_0) = -||x0_hat - x_0||^2 / w    (averaged over dimensions),  w = mean |x0_hat - x_0| (no gradient),
the paper's "adaptive" weighting, which makes its scale the same for every t and every sample. With the ELBO under
the sampling policy, ELBO_old, at the same point, the ratio rho = exp(ELBO_theta - ELBO_old) (no gradient) and the
advantage A_i = (R_i - mean_c R) / tau, the loss is the paper's proximal policy gradient (its "PEPG", the recipe's
default),
  L(theta) = -mean_i rho_i (A_i - log rho_i) ELBO_theta(x_0^i),
whose terms vanish where log rho_i = A_i: the update pulls each sample's log-likelihood ratio to the sampling policy
towards its advantage, the KL-regularized optimum p_theta ~ p_old exp(R / tau), and no further, so it needs no clip.

Defaults: 10 ODE steps for the rollouts; tau = 10, the reference's exact advantages beta (R - mean) / alpha at
beta = 1e-4, alpha = 1e-3. Departures from the paper: the old policy is the sampling policy (the reference's follows
the trained one as a slow EMA); no KL term to the base (the reference's Girsanov KL at weight 1e-4); one (t, eps) per
sample and iteration; the learning rate is the suite's 3e-5 for its small full networks (the reference's 3e-4 is
for SD3.5-M's LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """K: samples of each prompt; each reward is centred on its prompt's mean."""
    sample_steps: int | None = option(10, at_least=1)
    """Steps of the deterministic sampler that draws them; None: the model's default."""
    temperature: float = option(10.0, above=0)
    """tau: the advantage is (R - mean) / tau, the target log-likelihood ratio to the sampling policy."""
    inner_epochs: int = option(1, at_least=1)
    """Passes over each iteration's samples."""
    minibatch: int = option(16, at_least=1)
    """Samples per optimizer step."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def adaptive_elbo(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The final sample's ELBO estimate at x_t: -||x0_hat - x0||^2 / w averaged over dimensions, x0_hat = x_t - t v,
    w = the mean |x0_hat - x0| (no gradient, at least 1e-5). States (B, ...), t (B,); returns (B,)."""
    error = x_t - t.to(x_t).view(-1, *(1,) * (x_t.dim() - 1)) * velocity - x0
    weight = error.detach().abs().flatten(1).mean(dim=1).clamp(min=1e-5)
    return -error.pow(2).flatten(1).mean(dim=1) / weight


def proximal_policy_gradient_loss(
    elbo: torch.Tensor, old_elbo: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-mean rho (A - log rho) ELBO_theta with rho = exp(ELBO_theta - ELBO_old) held constant: (B,) each; returns the
    loss and log rho."""
    log_ratio = elbo.detach() - old_elbo
    return -(log_ratio.exp() * (advantages - log_ratio) * elbo).mean(), log_ratio


class ELBO(Trainer):
    name = "elbo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "temperature": Interval(0.3, 100.0, log=True),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the ODE chains and the sampling policy's forward at each sample's point, then per epoch a forward and a
        # backward
        images, steps, _ = chain_work(config, generator)
        return {
            "nfe": images * (steps + 1) + config.inner_epochs * images * 3,
            "reward_queries": images,
            "samples": images,
        }

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            chain = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator)
            rewards = self.reward(chain.images, prompts).float().cpu()
        grouped = rewards.view(-1, cfg.samples_per_prompt)
        advantages = ((grouped - grouped.mean(dim=1, keepdim=True)) / cfg.temperature).flatten()
        x0 = chain.latents[:, -1]
        x_t, t, _ = self.policy.flow_matching_point(x0, self.generator)
        advantages = advantages.to(x_t.device)
        epochs = [list(self.minibatches(len(prompts), cfg.minibatch)) for _ in range(cfg.inner_epochs)]
        old_elbo = torch.empty(len(prompts), device=x_t.device)
        with torch.no_grad():  # in the first epoch's minibatches: at theta = old, log rho is exactly 0
            for index in epochs[0]:
                velocity = self.policy.velocity(x_t[index], t[index], [prompts[i] for i in index.tolist()])
                old_elbo[index] = adaptive_elbo(x_t[index], t[index], velocity, x0[index])
        losses, log_ratios = [], []
        for minibatches in epochs:
            for index in minibatches:
                velocity = self.policy.velocity(x_t[index], t[index], [prompts[i] for i in index.tolist()])
                loss, log_ratio = proximal_policy_gradient_loss(
                    adaptive_elbo(x_t[index], t[index], velocity, x0[index]), old_elbo[index], advantages[index]
                )
                self.descend(loss, cfg.max_grad_norm)
                losses.append(loss.item())
                log_ratios.append(log_ratio.abs().mean().item())
        return {
            "reward": rewards.mean().item(),
            "loss": sum(losses) / len(losses),
            "log_ratio": sum(log_ratios) / len(log_ratios),
        }
