"""`gardo`: GARDO (He et al., "GARDO: Reinforcing Diffusion Models without Reward Hacking", arXiv 2512.24138; code:
tinnerhrhe/GARDO), on Flow-GRPO's update (methods/flow_grpo.py: its SDE, or CPS with `dynamics = "cps"`, its
10 training steps, PPO's clip).

A KL penalty to the base model holds back every sample to stop the few that hack the reward. GARDO changes three
things around Flow-GRPO's objective:
1. Gated KL. The KL term is taken over the samples whose proxy reward is least trustworthy only. A sample's
   uncertainty is how much better the proxy (the first reward of the run's reward spec, `--reward ocr+0.1*digit`:
   rewards/combined.py) ranks it than the auxiliary rewards (the others) do, as win rates over the batch:
     u_i = W_proxy(i) - mean_k W_k(i),   W(i) = the share of the batch's other samples it beats (ties half),
   and the gate is the ceil(b N) samples of largest u > 0. The share b starts at `gate_fraction` and adapts: x1.1 when
   the batch's mean uncertainty (of its u >= 0) exceeds every one of the last 20 iterations', x0.9 when it is below
   every one, kept in [0.02, 0.2].
2. Adaptive reference. The KL's reference is reset to the current policy every `reset_every` iterations, and at the
   next iteration after one whose mean gated KL exceeded `kl_threshold`: the regularization stays relevant as the
   policy improves.
3. Diversity-aware advantages. With d_i the distance from sample i to its nearest neighbour in its group (1 - cosine
   similarity of features), samples above their group's mean reward have their advantage scaled by d_i / mean_g(d):
     A_i = (R_i - mean_g(R)) / std_batch(R) * (d_i / mean_g(d) if R_i > mean_g(R) else 1),
   good and unusual samples are pushed harder, and no group's tiny reward gaps are divided by its own small std.

Departures from the paper: the features of (3) are the images' pixels, as a vector, where the reference uses DINOv3's
(the embedded worlds have no general image encoder that is not the judge, which no method may see). The trained
reward is the run's whole reward, the weighted sum of the spec's terms, as every method here trains on it (the
reference trains on the proxy alone and reads the auxiliaries for (1) only). The uncertainty's sign: the reference
code subtracts the auxiliaries' mean rank from the proxy's with rank 1 the best, which flags the samples the
auxiliaries prefer; here u flags those the proxy prefers, the hacked ones of the paper's argument. The gate's share
is of the whole batch (the reference takes its percentile among the samples with u >= 0). The advantage
divides by the batch's reward std (the reference leaves the scale to the reward's units, in [0, 1] in its tasks),
and is clipped to [-adv_clip, adv_clip]. With one reward there is no auxiliary to estimate uncertainty with: the KL
is taken over every sample (the gate open) and (2) and (3) stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.options import option
from methods.toolkit.policy_gradient import (
    FLOW_SDE_SEARCH,
    FlowGRPOOptions,
    PolicyGradientTrainer,
    ppo_epochs,
    zero_std_groups,
)
from methods.trainer import Parallel
from models.sampler import Sampler
from rewards.combined import reward_weights

GATE_BOUNDS = (0.02, 0.2)
"""The gate's share of the batch stays within these (the reference's beta_min, beta_max)."""
GATE_RATE = 0.1
"""The gate's share grows or shrinks by this fraction when the batch's uncertainty leaves its recent range."""
GATE_WINDOW = 20
"""The iterations whose mean uncertainty make the recent range."""


def batch_win_rates(scores: torch.Tensor) -> torch.Tensor:
    """Each sample's share of the batch's other samples it beats, ties counting half: (N,) -> (N,) in [0, 1]."""
    versus = scores[:, None] - scores[None, :]
    wins = (versus > 0).float() + 0.5 * (versus == 0).float()
    return (wins.sum(dim=1) - 0.5) / max(len(scores) - 1, 1)


def uncertainty(terms: Mapping[str, torch.Tensor], proxy: str) -> torch.Tensor:
    """u_i: the proxy's win rate minus the mean of the auxiliary terms' over the batch (the terms' (N,) scores)."""
    auxiliary = [batch_win_rates(values) for name, values in terms.items() if name != proxy]
    return batch_win_rates(terms[proxy]) - torch.stack(auxiliary).mean(dim=0)


def gate(u: torch.Tensor, share: float) -> torch.Tensor:
    """The ceil(share N) samples of largest positive u (fewer where fewer are positive), as an (N,) bool mask."""
    count = min(math.ceil(share * len(u)), int((u > 0).sum()))
    order = torch.argsort(u, descending=True, stable=True)
    mask = torch.zeros(len(u), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def adapted_share(share: float, recent: list[float], current: float) -> float:
    """The gate's next share: up by GATE_RATE when `current` (the batch's mean uncertainty) exceeds every `recent`
    one, down when it is below every one, within GATE_BOUNDS."""
    if recent and current > max(recent):
        share *= 1 + GATE_RATE
    elif recent and current < min(recent):
        share *= 1 - GATE_RATE
    return min(max(share, GATE_BOUNDS[0]), GATE_BOUNDS[1])


def diversity_advantages(rewards: torch.Tensor, features: torch.Tensor, groups: int, clip: float) -> torch.Tensor:
    """(3) above for a group-major (G * K,) batch of rewards and (G * K, D) features, clipped."""
    unit = torch.nn.functional.normalize(features.float().view(groups, -1, features.shape[-1]), dim=-1)
    distance = 1 - (unit @ unit.transpose(1, 2)).clamp(-1, 1)
    distance = distance + torch.diag_embed(torch.full(distance.shape[:2], math.inf))  # a sample is not its neighbour
    nearest = distance.min(dim=2).values
    grouped = rewards.view(groups, -1)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    scale = torch.where(centered > 0, nearest / nearest.mean(dim=1, keepdim=True).clamp_min(1e-12), 1.0)
    return (centered * scale / (rewards.std(unbiased=False) + 1e-6)).clamp(-clip, clip).flatten()


@dataclass(frozen=True)
class Config(FlowGRPOOptions):
    """GARDO's options: Flow-GRPO's (methods/toolkit/policy_gradient.py: FlowGRPOOptions), the gate's first share,
    and when the KL's reference is reset."""

    groups_apart: ClassVar[bool] = False  # the KL's gate ranks the whole batch's chains

    gate_fraction: float = option(0.1, above=0, at_most=1)
    """b: the share of the batch, most uncertain first, the KL is taken over at the first iteration (it then
    adapts within [0.02, 0.2])."""
    reset_every: int = option(15, at_least=1)
    """Iterations after which the KL's reference is reset to the current policy (the reference's reset_freq)."""
    kl_threshold: float = option(3e-4, above=0)
    """A mean gated KL (per dimension) above this resets the reference at the next iteration."""


class GARDO(PolicyGradientTrainer):
    name = "gardo"
    version = "1"
    Config = Config
    config: Config
    families = ("flow",)
    search_space = FLOW_SDE_SEARCH
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.share, self.recent = config.gate_fraction, []
        self.iteration, self.last_reset, self.reset_due = 0, 0, False

    def step(self) -> dict[str, float]:
        cfg = self.config
        if self.reference is not None and (self.reset_due or self.iteration - self.last_reset > cfg.reset_every):
            self.reference.load_state_dict(self.policy.state_dict())
            self.last_reset, self.reset_due = self.iteration, False
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        sampler = Sampler(cfg.dynamics, cfg.noise_level)
        trajectory, terms = self.sample_terms(prompts, self.sampler_steps(cfg.sample_steps), sampler)
        weights = reward_weights(self.reward)
        rewards = torch.stack([weight * terms[name] for name, weight in weights.items()]).sum(dim=0)
        groups = len(prompts) // cfg.samples_per_prompt
        features = trajectory.images.detach().float().cpu().flatten(1)
        advantages = diversity_advantages(rewards, features, groups, cfg.adv_clip)
        kl_gate, share = self.gated(terms, self.parallel)
        summary = ppo_epochs(self, trajectory, advantages, kl_gate=kl_gate)
        self.reset_due = summary.get("kl", 0.0) > cfg.kl_threshold
        self.iteration += 1
        return {
            "reward": rewards.mean().item(),
            "zero_std_groups": zero_std_groups(rewards, groups),
            "gate_share": share,
            "gated": float(kl_gate.float().mean()),
            **summary,
        }

    def gated(self, terms: Mapping[str, torch.Tensor], parallel: Parallel) -> tuple[torch.Tensor, float]:
        """This process's chains the KL is taken over, and the share the gate was drawn at: (1) above over every
        process's batch; every chain where the reward has no auxiliary term."""
        if len(terms) == 1:
            return torch.ones(len(next(iter(terms.values()))), dtype=torch.bool), 1.0
        u = uncertainty({name: parallel.gather(values) for name, values in terms.items()}, next(iter(terms)))
        positive = u[u >= 0]
        current = float(positive.mean()) if len(positive) else 0.0
        self.share = adapted_share(self.share, self.recent, current) if self.recent else self.config.gate_fraction
        self.recent = [*self.recent, current][-GATE_WINDOW:]
        return parallel.local(gate(u, self.share)), self.share

    def state_dict(self) -> dict:
        counters = {"iteration": self.iteration, "last_reset": self.last_reset, "reset_due": self.reset_due}
        reference = {} if self.reference is None else {"reference": self.reference.state_dict()}
        return {**super().state_dict(), **reference, **counters, "share": self.share, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.iteration, self.last_reset, self.reset_due = state["iteration"], state["last_reset"], state["reset_due"]
        self.share, self.recent = state["share"], list(state["recent"])
