"""`dgpo`: Direct Group Preference Optimization (Luo, Hu and Tang, "Reinforcing Diffusion Models by Direct Group
Preference Optimization", arXiv 2510.08425, ICLR 2026; code: Luo-Yihong/DGPO).

The paper's point: GRPO's gain comes from the group's relative preferences, not from the policy gradient, so the
group can be learned from directly, as DPO learns a pair, with samples drawn by the deterministic ODE sampler (no
stochastic chain, no likelihoods of its steps) and a training point anywhere on the forward path. For a prompt's G
samples x_0^i with group advantages A_i (GRPO's, sum_i A_i = 0), the group's implicit reward under theta against
the frozen reference is
  R_theta(G) = -beta_dpo / G sum_i A_i (l_theta^i - l_ref^i),   l^i = ||v(x_t^i, t) - (eps - x_0^i)||^2 (per dim),
with one (t, eps) shared by the group (x_t^i = (1 - t) x_0^i + t eps), and DGPO maximizes log sigma(R_theta(G)), the
likelihood that the group's better half is preferred to its worse half. Its gradient is
  -grad log sigma(R_theta) = w_G beta_dpo / G sum_i A_i grad l_theta^i,   w_G = sigma(-R_theta) (no gradient),
so the loss trained is the advantage-weighted flow-matching loss with each group weighted by how far its preference
is from learned,
  L(theta) = mean_i w_G(i) A_i l_theta^i + kl_coef mean_i ||v_theta(x_t^i) - v_ref(x_t^i)||^2,
(the reference code's form: its gradient is the objective's divided by beta_dpo B / G, B the samples of a minibatch).
As in the reference code, a sample whose likelihood ratio exp(l_old - l_theta) to the sampling policy has moved by
clip_range the way its advantage pushes it (above 1 + clip_range with A > 0, below 1 - clip_range with A < 0) has
its l_theta held constant (no gradient): the paper's PPO-style clip, added at its review.

Defaults: the reference code's first mode (rollouts and training without CFG here, as the suite's models have none;
a frozen reference): beta_dpo = 100, kl_coef = 1e-3, clip_range = 1e-3; 10 ODE steps as Flow-GRPO's training chains.
Departures from the paper: the ratio's old policy is the sampling policy (the reference code's is an EMA of the
policy); t is drawn uniformly in (0, 1) per group (the reference draws some of the sampler's own timesteps and takes
an optimizer step at each); one (t, eps) per iteration, shared by its epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.flow_matching import flow_matching_error
from methods.toolkit.policy_gradient import group_normalized_advantages, zero_std_groups
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration, one group each."""
    samples_per_prompt: int = option(8, at_least=2)
    """G: samples of each prompt, whose rewards are normalized within the prompt's group."""
    sample_steps: int | None = option(10, at_least=1)
    """Steps of the deterministic sampler that draws them; None: the model's default."""
    adv_clip: float = option(5.0, above=0)
    """Advantages are clipped to [-adv_clip, adv_clip]."""
    beta_dpo: float = option(100.0, above=0)
    """The scale of the group's implicit reward: larger, the sharper each group's weight sigma(-R_theta)."""
    clip_range: float = option(1e-3, above=0)
    """How far a sample's likelihood ratio to the sampling policy may move the way its advantage pushes it before its
    loss is held constant."""
    kl_coef: float = option(1e-3, at_least=0)
    """Weight of the velocity distance to the frozen reference."""
    groups_per_minibatch: int = option(2, at_least=1)
    """Whole groups per optimizer step (a group's weight reads all of its samples)."""
    inner_epochs: int = option(1, at_least=1)
    """Passes over each iteration's groups."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def dgpo_loss(
    v_theta: torch.Tensor,
    target: torch.Tensor,
    reference_error: torch.Tensor,
    old_error: torch.Tensor,
    advantages: torch.Tensor,
    group: int,
    beta_dpo: float,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DGPO's policy term on whole groups of `group` consecutive samples: velocities and target (B, ...), the
    reference's and the sampling policy's errors l_ref, l_old and the advantages (B,). Returns (the loss, each group's
    weight w_G (B / group,), which samples are held by the clip (B,))."""
    error = flow_matching_error(v_theta, target)
    implicit_reward = -beta_dpo * (advantages * (error.detach() - reference_error)).view(-1, group).mean(dim=1)
    weight = torch.sigmoid(-implicit_reward)
    ratio = torch.exp(old_error - error.detach())
    held = torch.where(advantages > 0, ratio > 1 + clip_range, ratio < 1 - clip_range)
    trained = torch.where(held, error.detach(), error)
    return (weight.repeat_interleave(group) * advantages * trained).mean(), weight, held


class DGPO(Trainer):
    name = "dgpo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = {
        "learning_rate": Interval(3e-6, 3e-4, log=True),
        "beta_dpo": Interval(10.0, 1000.0, log=True),
        "clip_range": Interval(1e-4, 1e-1, log=True),
        "kl_coef": Interval(0.0, 0.01),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "groups_per_minibatch": 1}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the ODE chains and the sampling policy's forward at each training point, then per epoch the policy's
        # forward and backward and the reference's forward
        images, steps, _ = chain_work(config, generator)
        return {
            "nfe": images * (steps + 1) + config.inner_epochs * images * 4,
            "reward_queries": images,
            "samples": images,
        }

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy()

    def step(self) -> dict[str, float]:
        cfg = self.config
        group = cfg.samples_per_prompt
        prompts = self.prompt_batch(cfg.prompts_per_iter, group)
        with torch.no_grad():
            chain = self.policy.sample(prompts, self.sampler_steps(cfg.sample_steps), self.generator)
            rewards = self.reward(chain.images, prompts).float().cpu()
        advantages = group_normalized_advantages(rewards, len(prompts) // group, cfg.adv_clip)
        x_t, t, target = self.policy.flow_matching_point(chain.latents[:, -1], self.generator, shared=group)
        with torch.no_grad():
            old_error = flow_matching_error(self.policy.velocity(x_t, t, prompts), target)
        advantages = advantages.to(x_t.device)
        losses, gaps, weights, held = [], [], [], []
        for _ in range(cfg.inner_epochs):
            for groups in self.minibatches(len(prompts) // group, cfg.groups_per_minibatch, "groups_per_minibatch"):
                index = (groups[:, None] * group + torch.arange(group)).flatten()
                batch_prompts = [prompts[i] for i in index.tolist()]
                v_theta = self.policy.velocity(x_t[index], t[index], batch_prompts)
                with torch.no_grad():  # the same batch as theta's: at theta = reference, the same numbers
                    v_ref = self.reference.velocity(x_t[index], t[index], batch_prompts)
                policy_loss, weight, clipped = dgpo_loss(
                    v_theta,
                    target[index],
                    flow_matching_error(v_ref, target[index]),
                    old_error[index],
                    advantages[index],
                    group,
                    cfg.beta_dpo,
                    cfg.clip_range,
                )
                gap = flow_matching_error(v_theta, v_ref).mean()
                loss = policy_loss + cfg.kl_coef * gap
                self.descend(loss, cfg.max_grad_norm)
                losses.append(loss.item())
                gaps.append(gap.item())
                weights.append(weight.mean().item())
                held.append(clipped.float().mean().item())
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, len(prompts) // group),
            "loss": sum(losses) / len(losses),
            "kl": sum(gaps) / len(gaps),
            "group_weight": sum(weights) / len(weights),
            "clip_fraction": sum(held) / len(held),
        }
