"""`awm`: Advantage Weighted Matching (Xue et al., "Advantage Weighted Matching: Aligning RL with Pretraining in
Diffusion Models", arXiv 2509.25050; code: scxue/advantage_weighted_matching).

The paper shows DDPO's per-step likelihood ratio to be score/flow matching with a noisy target, whose variance slows
it down, and trains instead with the pretraining loss itself, each sample weighted by its advantage. Each iteration
draws K samples x_0 of each prompt c from the current policy, scores them, and turns the rewards into group
advantages (GRPO's),
  A_i = clip( (R_i - mean_c R) / (std_c R + 1e-6), -adv_clip, adv_clip ).
With the forward process x_t = (1 - t) x_0 + t eps and its velocity v = eps - x_0 (models/flow.py), the negative
flow-matching error is the sample's log-likelihood surrogate (its ELBO, uniformly weighted over t),
  log p_theta(x_0^i | c_i) ~ -||v_theta(x_t^i, t, c_i) - v^i||^2   (averaged over dimensions),
and the loss is PPO's clipped surrogate on its ratio to the sampling policy's, r_i = exp(log p_theta - log p_old),
  L(theta) = mean_i max( -A_i r_i, -A_i clip(r_i, 1 - clip_range, 1 + clip_range) )
             + beta mean_i ||v_theta(x_t^i, t, c_i) - v_ref(x_t^i, t, c_i)||^2,
whose gradient at r = 1 is the advantage-weighted flow-matching gradient: it raises the likelihood of the samples
better than their group's mean and lowers that of the worse ones, and the clip stops a sample's term once its
likelihood has moved by clip_range (without it, the negatively weighted terms are unbounded and the model unlearns
its prompts). beta weighs an optional velocity-space KL to the base model (the paper's default: none). Neither term
needs sampler log-probabilities or reward gradients, so any sampler and any reward work.

Departures from the paper: samples are drawn with the model's deterministic sampler at `sample_steps` (AWM needs
no stochastic chain; the paper samples with Flow-GRPO's SDE, which this suite keeps for the likelihood methods); one
(t, eps) per sample and iteration, t uniform (the paper draws several, stratified, and its default weights them);
the old log-likelihoods come from one no-grad pass before the updates. The flow family only, as the loss is written
for its velocity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.flow_matching import flow_matching_error
from methods.toolkit.policy_gradient import group_normalized_advantages, ppo_clipped_loss, zero_std_groups
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """K: samples of each prompt, whose rewards are normalized within the prompt's group."""
    sample_steps: int | None = option(10, at_least=1)
    """Steps of the deterministic sampler that draws them; None: the model's default."""
    adv_clip: float = option(5.0, above=0)
    """Advantages are clipped to [-adv_clip, adv_clip]."""
    clip_range: float = option(1e-4, above=0)
    """PPO's clip of the likelihood ratio r = exp(log p_theta - log p_old) (the paper's 1e-4: the flow-matching error
    moves little per step)."""
    beta: float = option(0.0, at_least=0)
    """Weight of the velocity-space KL to the base model (0: none, and no reference passes)."""
    inner_epochs: int = option(1, at_least=1)
    """Passes over each iteration's samples, each with its own (t, eps)."""
    minibatch: int = option(16, at_least=1)
    """Samples per optimizer step."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def flow_log_likelihood(v_theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The surrogate log p (B,) of samples whose velocities (B, ...) regress `target`: minus the squared error,
    averaged over dimensions."""
    return -flow_matching_error(v_theta, target)


def awm_loss(
    v_theta: torch.Tensor,
    target: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    v_ref: torch.Tensor | None,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L(theta) on a minibatch, its KL term and the likelihood ratio (B,): velocities and target (B, ...),
    old_log_prob and advantages (B,), v_ref None when beta = 0."""
    policy, ratio = ppo_clipped_loss(flow_log_likelihood(v_theta, target), old_log_prob, advantages, clip_range)
    gap = (v_theta - v_ref).pow(2).flatten(1).mean(dim=1).mean() if v_ref is not None else policy.new_zeros(())
    return policy + beta * gap, gap, ratio


class AWM(Trainer):
    name = "awm"
    version = "1"
    Config = Config
    families = ("flow",)
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "beta": Interval(0.0, 0.1),
        "clip_range": Interval(1e-5, 1e-2, log=True),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the chains and the old log-likelihoods' pass, then per epoch the policy's forward + backward and the
        # reference's forward when beta > 0
        images, steps, _ = chain_work(config, generator)
        per_epoch = images * (3 + (1 if config.beta > 0 else 0))
        return {
            "nfe": images * (steps + 1) + config.inner_epochs * per_epoch,
            "reward_queries": images,
            "samples": images,
        }

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy() if config.beta > 0 else None

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            chain = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator)
            rewards = self.reward(chain.images, prompts).float().cpu()
        groups = len(prompts) // cfg.samples_per_prompt
        advantages = group_normalized_advantages(rewards, groups, cfg.adv_clip)
        x_t, t, target = self.policy.flow_matching_point(chain.latents[:, -1], self.generator)
        with torch.no_grad():
            old_log_prob = flow_log_likelihood(self.policy.velocity(x_t, t, prompts), target)
        losses, gaps, clipped = [], [], []
        for _ in range(cfg.inner_epochs):
            for index in self.minibatches(len(prompts), cfg.minibatch):
                batch_prompts = [prompts[i] for i in index.tolist()]
                v_theta = self.policy.velocity(x_t[index], t[index], batch_prompts)
                v_ref = None
                if self.reference is not None:
                    with torch.no_grad():
                        v_ref = self.reference.velocity(x_t[index], t[index], batch_prompts)
                loss, gap, ratio = awm_loss(
                    v_theta, target[index], old_log_prob[index], advantages[index], cfg.clip_range, v_ref, cfg.beta
                )
                self.descend(loss, cfg.max_grad_norm)
                losses.append(loss.item())
                gaps.append(gap.item())
                clipped.append(((ratio - 1).abs() > cfg.clip_range).float().mean().item())
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, groups),
            "loss": sum(losses) / len(losses),
            "kl": sum(gaps) / len(gaps),
            "clip_fraction": sum(clipped) / len(clipped),
            "zero_advantage_share": (advantages == 0).float().mean().item(),
        }
