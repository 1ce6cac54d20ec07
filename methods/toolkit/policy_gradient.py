"""Policy gradients over the sampling chain, shared by the methods that treat it as an MDP (ddpo, sas, the GRPO
family: flow_grpo, mix_grpo, dance_grpo, tempflow_grpo, pref_grpo, gdpo, gardo; and flow_dppo).

The chain's stochastic steps are the MDP's actions: x_{s+1} ~ pi_theta(. | x_s, c) = N(mu_theta(x_s), sigma_s^2 I).
For trajectories sampled from the old policy, with advantage A_s at step s,
  L(theta) = sum_{s in S} [ max(-A_s rho_s, -A_s clip(rho_s, 1 - eps, 1 + eps)) + kl_coef * KL_s ] / n,
  rho_s = pi_theta(x_{s+1} | x_s, c) / pi_old(x_{s+1} | x_s, c),
with KL_s the closed-form KL between the step's Gaussians under theta and a frozen reference (per dimension, as
divergences.py normalizes it), taken at the visited states, and n = |S| (an average over steps, as DDPO's) or 1 (a
sum, the Riemann sum of a continuous-time objective, as Scores-as-Actions').

GRPO-Guard (Wang et al., "GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching via Regulated
Clipping", arXiv 2510.22319) replaces rho_s by a regulated ratio. For a step drawn as x_{s+1} = mu_old + std eps,
with d = mu_theta - mu_old,
  log rho_s = eps . d / std - ||d||^2 / (2 std^2),
whose second term shifts the ratio below 1 (so PPO's clip rarely bounds a positive advantage) and whose spread
grows as std shrinks. RatioNorm adds the shift back and rescales by std,
  log rho~_s = (log rho_s + ||d||^2 / (2 std^2)) std = eps . d,
centred at 0 for every step, and the step's loss is weighted by 1 / dt_s (dt_s the step's length in flow time), since
d, and with it the gradient, scales with dt_s.

Flow-DPPO (methods/flow_dppo.py) bounds the update otherwise: the clip gives way to DPPO's mask (KLMask), which drops
a step's term where its exact Gaussian KL from the sampling policy exceeds a threshold and the ratio has already moved
the way the advantage pushes it.

A method on this contract declares its Config as PPOOptions (or PolicyGradientOptions with its own `kl_weight` and
`trust_region`, from the option mixins below) plus its own options, its trainer as a PolicyGradientTrainer (the
optimizer, the KL's reference, `sample_scored` and the cost of training every step come with it), and its `step`
samples and scores the chains, turns the rewards into advantages, (B,) or (B, N), and calls `ppo_epochs`; `ppo_usage`
states what that costs. A group-relative method (each group's advantages from its own rewards) does all of that in
one call, `group_update`, which can also take the chains a few groups at a time (reuse_groups).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from methods.options import Interval, Options, Search, option
from methods.toolkit.divergences import closed_form
from methods.trainer import Trainer, chain_work, make_optimizer
from models.diffusion import gaussian_log_prob
from models.policy import NoiseRows, NoiseTape, Policy, Trajectory
from models.sampler import Sampler
from rewards.combined import reward_components

STEPS_PER_CALL = 10
"""The default of the methods' `steps_per_call`, the trained steps one network call re-evaluates. Measured on a
digits DDPO step (20 steps, minibatch 16, one thread): 1.50 s at 1, 0.76 s at 4, 0.67 s at 10, 0.62 s at 20;
10 keeps a call's activations to half a 20-step chain's."""


@dataclass(frozen=True)
class PolicyGradientOptions(Options, ABC):
    """The options every method trained by `ppo_epochs` shares, declared and documented once here. A method's Config
    extends this class (or PPOOptions), adds its own options, and redeclares a shared field only to give it another
    default or range; the command line's help reads the docstring from the class that declares the field."""

    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """G: the samples of each prompt per iteration (the group of the group-relative advantages)."""
    sample_steps: int | None = option(None, at_least=1)
    """Sampler steps of the training chains (the MDP's horizon); None: the model's default."""
    inner_epochs: int = option(1, at_least=1)
    """Passes of PPO updates over each iteration's trajectories."""
    minibatch: int = option(16, at_least=1)
    """Trajectories per optimizer step."""
    steps_per_call: int = option(STEPS_PER_CALL, at_least=1)
    """Trained steps of a minibatch whose re-evaluation is batched into one network call (steps_per_call x minibatch
    states); lower it to bound memory, 1: a call per step. Batching only reorders float sums."""
    reuse_sampling_pass: bool = option(False, added=True)
    """The first optimizer step of an iteration differentiates the sampling pass (each step's mean, the states as
    constants) instead of re-evaluating its steps: the same gradient, as rho = 1 there, a forward fewer per trained
    step of the first epoch, every chain's activations held until then (but see reuse_groups); needs one minibatch
    of every chain."""
    reuse_groups: int | None = option(None, at_least=1, added=True)
    """With reuse_sampling_pass: sample, score and differentiate the chains this many prompt groups at a time, each
    part's activations let go before the next part is sampled (PolicyGradientTrainer.group_update): a part's
    memory instead of every chain's, the same chains and update to float error; None: every chain in one pass. For
    methods whose group's advantages come from its own rewards alone."""
    groups_apart: ClassVar[bool] = True
    """Whether a prompt group's advantages come from that group's rewards alone, so that the method can sample and
    differentiate its chains some groups at a time (reuse_groups); False for a method whose advantages read the
    whole batch."""
    adv_clip: float = option(5.0, above=0)
    """Advantages, in units of the rewards' spread, are clipped to [-adv_clip, adv_clip]."""
    learning_rate: float = option(3e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        check_sampling_pass_reuse(self)

    @property
    @abstractmethod
    def kl_weight(self) -> float:
        """The weight of the per-step KL to the frozen reference policy (0: no KL, no reference, none of its passes):
        the option a method names it by (PPOOptions' kl_coef, Scores-as-Actions' beta)."""

    @property
    @abstractmethod
    def trust_region(self) -> RatioClip | KLMask:
        """What bounds an update's move from the sampling policy: PPO's clip (RatioClipOptions) or DPPO's mask."""


@dataclass(frozen=True)
class RatioClipOptions(PolicyGradientOptions):
    """The policy-gradient options of the methods whose trust region is PPO's clipped ratio."""

    clip_range: float = option(0.2, above=0)
    """PPO ratio clipping epsilon (for log-densities summed over pixels)."""

    @property
    def trust_region(self) -> RatioClip:
        return RatioClip(self.clip_range)


@dataclass(frozen=True)
class KLPenaltyOptions(Options):
    """The per-step KL penalty weighed by `kl_coef`, for a method's Config beside its policy-gradient options."""

    kl_coef: float = option(0.0, at_least=0)
    """Weight of the per-step KL to the frozen base model (0 disables it and its reference passes)."""

    @property
    def kl_weight(self) -> float:
        return self.kl_coef


@dataclass(frozen=True)
class PPOOptions(KLPenaltyOptions, RatioClipOptions):
    """The policy-gradient options of DDPO and the GRPO family: the shared ones, PPO's clip range and the KL penalty's
    kl_coef."""


SDE_DYNAMICS = ("flow-sde", "cps")
"""The dynamics the GRPO family's flow chains may be drawn with (models/sampler.py)."""


@dataclass(frozen=True)
class FlowSDEDynamics(Options):
    """The dynamics of a flow chain's stochastic steps and their noise level, for the methods that train a flow
    model's SDE steps; a method's Config adds it to its policy-gradient options (FlowSDEOptions, Flow-DPPO's)."""

    noise_level: float = option(0.7, above=0)
    """The stochastic steps' noise: a in sigma_t = a sqrt(t / (1 - t)) (flow-sde), eta (cps)."""
    dynamics: str = option("flow-sde", added=True)
    """The stochastic steps' dynamics: flow-sde (Flow-GRPO's SDE, noise level a) or cps (coefficients-preserving
    sampling, arXiv 2509.05952: noise level eta in (0, 1], models/flow.py)."""

    def __post_init__(self):
        super().__post_init__()
        method = type(self).__module__.rpartition(".")[2]
        if self.dynamics not in SDE_DYNAMICS:
            raise ValueError(f"{method}.dynamics must be one of {', '.join(SDE_DYNAMICS)}, got {self.dynamics!r}")
        if self.dynamics == "cps" and self.noise_level > 1:
            raise ValueError(f"{method}.noise_level must be <= 1 with dynamics cps (eta), got {self.noise_level:g}")


@dataclass(frozen=True)
class FlowSDEOptions(FlowSDEDynamics, PPOOptions):
    """PPO's options and the flow SDE's dynamics, for Flow-GRPO and MixGRPO."""


@dataclass(frozen=True)
class FlowGRPOOptions(FlowSDEOptions):
    """Flow-GRPO's options at its paper's training steps and KL weight, for the methods that train Flow-GRPO's update
    and change what comes before it (flow_grpo's windows, pref_grpo's win rates, gdpo's advantages)."""

    sample_steps: int | None = option(10, at_least=2)
    """T_train: sampler steps of the training chains (denoising reduction; evaluation uses the model's default);
    None: the model's default."""
    kl_coef: float = option(0.04, at_least=0)
    """beta: weight of the per-step KL to the frozen base model (0 disables it and its reference passes)."""


FLOW_SDE_SEARCH: dict[str, Search] = {
    "learning_rate": Interval(3e-6, 3e-4, log=True),
    "kl_coef": Interval(0.0, 0.2),
    "noise_level": Interval(0.3, 1.0),
    "clip_range": Interval(0.02, 0.5, log=True),
}
"""What tuning searches for the methods on FlowSDEOptions' update: the learning rate, the KL weight, the SDE's noise
level and PPO's clip range."""


class PolicyGradientTrainer(Trainer):
    """A method whose update is `ppo_epochs`: its optimizer over the policy's trainable parameters, and the frozen
    reference of the KL term where the config weighs one (`reference`, None otherwise)."""

    config: PolicyGradientOptions

    def __init__(
        self,
        policy: Policy,
        reward,
        prompts: list[str],
        config: PolicyGradientOptions,
        seed: int,
        learning_rate: float | None = None,
    ):
        """`learning_rate`: the optimizer's, where the method resolves it per model (None: config.learning_rate)."""
        super().__init__(policy, reward, prompts, config, seed)
        rate = config.learning_rate if learning_rate is None else learning_rate
        self.optimizer = make_optimizer(policy.trainable_parameters(), rate)
        self.reference: Policy | None = policy.frozen_copy() if config.kl_weight > 0 else None

    @classmethod
    def step_usage(cls, config: PolicyGradientOptions, generator: type) -> dict[str, float]:
        """ppo_epochs' cost where it trains every stochastic step of every chain (ppo_usage); a method that trains
        fewer steps, or queries the reward more often, states its own."""
        images, steps, actions = chain_work(config, generator)
        return ppo_usage(config, images, steps, actions)

    def sample_chains(
        self,
        prompts: list[str],
        steps: int | torch.Tensor,
        sampler: Sampler,
        initial: torch.Tensor | None = None,
        noise: NoiseRows | None = None,
    ) -> Trajectory:
        """The iteration's chains of `prompts` from the sampling policy (Policy.sample's steps, sampler and initial
        noise; with the score's graph where the config reuses the sampling pass), their noise drawn from the
        trainer's generator or read from `noise`, a tape's rows (group_update's parts). A chain without a stochastic
        step (a 1-step consistency sampler) has nothing to train: refused."""
        with torch.no_grad():
            trajectory = self.policy.sample(
                prompts,
                steps,
                self.generator if noise is None else noise,
                sampler,
                initial=initial,
                score_graph=self.config.reuse_sampling_pass,
            )
        if not trajectory.stochastic_steps:
            raise ValueError(
                f"{self.name} needs a stochastic sampling step to train on; a chain of {len(trajectory.timesteps)} "
                f"step(s) here has none (set {self.name}.sample_steps >= 2)"
            )
        return trajectory

    def sample_scored(
        self,
        prompts: list[str],
        steps: int | torch.Tensor,
        sampler: Sampler,
        initial: torch.Tensor | None = None,
        noise: NoiseRows | None = None,
    ) -> tuple[Trajectory, torch.Tensor]:
        """`sample_chains`' chains and their rewards, (B,) float32 on the CPU."""
        trajectory = self.sample_chains(prompts, steps, sampler, initial, noise)
        with torch.no_grad():
            return trajectory, self.reward(trajectory.images, prompts).float().cpu()

    def group_update(
        self,
        prompts: list[str],
        steps: int | torch.Tensor,
        sampler: Sampler,
        advantages_of: Callable[[Tensor, int], Tensor] | None = None,
        *,
        initial: torch.Tensor | None = None,
        step_fraction: float | None = 1.0,
        guard: bool = False,
    ) -> tuple[Tensor, dict[str, float]]:
        """A group-relative iteration: samples and scores the chains of `prompts` (group-major, samples_per_prompt
        each; `sample_scored`'s steps, sampler and initial noise), turns each group's rewards into its advantages
        (`advantages_of`: the rewards of whole groups and their number -> their advantages, (n,) or (n, N); None:
        group_normalized_advantages at config.adv_clip) and runs ppo_epochs (its step_fraction and guard). Returns the
        rewards and ppo_epochs' summary.

        With config.reuse_groups the chains are sampled, scored and differentiated that many groups at a time, on
        the sampling pass (ppo_chain_backward's on_policy), each part's graph let go before the next is sampled:
        the first optimizer step's gradient accumulates over the parts, weighed by their shares of the minibatch,
        and ppo_epochs applies it (FirstPass). The parts read their noise from one NoiseTape and the first pass's
        draws (the chains' order, the trained steps) come right after the first part's sampling, when the generator
        has given every draw of the sampling: the generator's stream, the chains and the update are the one-pass
        ones, but for float sums over batches of another size."""
        cfg = self.config
        per_group = cfg.samples_per_prompt
        if advantages_of is None:
            advantages_of = functools.partial(group_normalized_advantages, clip=cfg.adv_clip)
        if not cfg.reuse_groups:
            trajectory, rewards = self.sample_scored(prompts, steps, sampler, initial)
            advantages = advantages_of(rewards, len(prompts) // per_group)
            return rewards, ppo_epochs(self, trajectory, advantages, step_fraction=step_fraction, guard=guard)
        tape, size = NoiseTape(self.generator, len(prompts)), cfg.reuse_groups * per_group
        parts, rewards, advantages = [], [], []
        first: FirstPass | None = None
        for start in range(0, len(prompts), size):
            stop = min(start + size, len(prompts))
            part_initial = None if initial is None else initial[start:stop]
            part, part_rewards = self.sample_scored(
                prompts[start:stop], steps, sampler, part_initial, noise=tape.rows(start, stop)
            )
            if first is None:
                order = torch.randperm(len(prompts), generator=self.generator)
                first = FirstPass(order, draw_steps(self.generator, part.stochastic_steps, step_fraction))
                self.zero_gradients()
            part_advantages = advantages_of(part_rewards, (stop - start) // per_group)
            stats = ppo_chain_backward(
                self.policy,
                self.reference,
                part,
                first.steps,
                part_advantages,
                cfg.trust_region,
                cfg.kl_weight,
                average=True,
                chunk=cfg.steps_per_call,
                guard=guard,
                on_policy=True,
                share=(stop - start) / len(prompts),
            )
            first.add(stats, stop - start)
            parts.append(replace(part, mean_graphs=()))
            rewards.append(part_rewards)
            advantages.append(part_advantages)
        trajectory = Trajectory.concatenate(parts)
        summary = ppo_epochs(
            self, trajectory, torch.cat(advantages), step_fraction=step_fraction, guard=guard, first=first
        )
        return torch.cat(rewards), summary

    def sample_terms(
        self, prompts: list[str], steps: int | torch.Tensor, sampler: Sampler
    ) -> tuple[Trajectory, dict[str, torch.Tensor]]:
        """`sample_chains`' chains and each term of their reward by name (a combined reward's, or the one reward's:
        rewards/combined.py), (B,) float32 on the CPU; their weights are rewards.combined.reward_weights'."""
        trajectory = self.sample_chains(prompts, steps, sampler)
        with torch.no_grad():
            scored = reward_components(self.reward, trajectory.images, prompts)
        return trajectory, {name: values.float().cpu() for name, values in scored.items()}


def ppo_clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate (to minimise) and the ratio. All inputs (B,); returns (scalar, (B,)) on log_prob's
    device (advantages come from rewards, which are computed on the CPU)."""
    advantages = advantages.to(log_prob.device)
    ratio = torch.exp(log_prob - old_log_prob.to(log_prob.device))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


@dataclass(frozen=True)
class RatioClip:
    """PPO's trust region: the ratio is clipped to [1 - clip_range, 1 + clip_range] where clipping lowers the
    surrogate (ppo_clipped_loss); `outside` names the diagnostic that counts the terms outside it."""

    clip_range: float
    outside = "clip_frac"

    def surrogate(
        self, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, step: tuple[Tensor, Tensor, float]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(the loss to minimise, the ratio (B,), which terms lie outside the region (B,)) from the log-probabilities
        under theta and the sampling policy and the advantages (B,); the step's Gaussians are not read."""
        loss, ratio = ppo_clipped_loss(log_prob, old_log_prob, advantages, self.clip_range)
        return loss, ratio, (ratio - 1).abs() > self.clip_range


@dataclass(frozen=True)
class KLMask:
    """DPPO's trust region (Qi et al., "Rethinking the Trust Region in LLM Reinforcement Learning", arXiv 2602.04879,
    its equations 12 and 14), made exact for Gaussian steps by Flow-DPPO: the unclipped surrogate -A rho, with a term
    dropped (its gradient zeroed, its place in the mean kept) where the step's KL from the sampling policy exceeds
    `threshold` and the ratio has already moved the way the advantage pushes it (rho > 1 with A > 0, rho < 1 with
    A < 0): a term may always move back towards the sampling policy. `outside` names the diagnostic of the masked."""

    threshold: float
    outside = "mask_frac"

    def surrogate(
        self, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, step: tuple[Tensor, Tensor, float]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(the loss to minimise, the ratio (B,), the masked terms (B,)) from the log-probabilities under theta and
        the sampling policy, the advantages (B,), and the step's Gaussians (mean under theta, mean under the sampling
        policy, their std), whose KL per dimension, ||mu_theta - mu_old||^2 / (2 std^2 D), is the divergence."""
        advantages = advantages.to(log_prob.device)
        ratio = torch.exp(log_prob - old_log_prob.to(log_prob.device))
        mean, old_mean, std = step
        with torch.no_grad():
            divergence = closed_form("kl", mean, std, old_mean.to(mean.device), std)
        pushed_on = ((ratio > 1) & (advantages > 0)) | ((ratio < 1) & (advantages < 0))
        masked = (divergence > self.threshold) & pushed_on
        # where, not a product: a ratio that overflowed would make 0 * inf a NaN
        loss = torch.where(masked, torch.zeros_like(ratio), -advantages * ratio).mean()
        return loss, ratio, masked


def guarded_log_ratio(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor, std: float
) -> torch.Tensor:
    """GRPO-Guard's RatioNorm, log rho~ = (log rho + ||mu_theta - mu_old||^2 / (2 std^2)) std (module docstring):
    log-probabilities (B,), the step's means under theta and the sampling policy (B, ...), its std; returns (B,)."""
    old_mean = old_mean.to(mean.device)
    shift = (mean - old_mean).pow(2).flatten(1).sum(dim=1) / (2 * std**2)
    return (log_prob - old_log_prob.to(log_prob.device) + shift) * std


def group_normalized_advantages(rewards: torch.Tensor, groups: int, clip: float) -> torch.Tensor:
    """(r - mean_g) / (std_g + 1e-6) within each group of a group-major (G * K,) vector, clipped.

    A group whose rewards are all equal carries no preference and gets advantage 0 (zero_std_groups counts them).
    """
    grouped = rewards.view(groups, -1)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False)
    return (centered / (std + 1e-6)).clamp(-clip, clip).flatten()


def zero_std_groups(rewards: torch.Tensor, groups: int) -> float:
    """The share of the groups of group-major rewards, (G * K,) or (G * K, T) for T reward terms, whose rewards are
    all equal (every term's, where there are several): groups that teach a group-relative method nothing (every
    advantage 0), as an all-solved or all-failed prompt of a 0/1 reward does."""
    grouped = rewards.reshape(groups, rewards.shape[0] // groups, -1)
    return (grouped.std(dim=1, unbiased=False) == 0).all(dim=1).float().mean().item()


def ppo_chain_backward(
    policy: Policy,
    reference: Policy | None,
    trajectory: Trajectory,
    steps: Sequence[int],
    advantages: torch.Tensor,
    trust_region: RatioClip | KLMask,
    kl_coef: float,
    average: bool,
    chunk: int,
    guard: bool = False,
    on_policy: bool = False,
    kl_gate: torch.Tensor | None = None,
    share: float = 1.0,
) -> dict[str, list[float]]:
    """Backpropagates L(theta) above over the chosen stochastic `steps` of a (sub)trajectory of B chains, `chunk`
    steps at a time: their means come from one network call on chunk * B states (policy.step_means), one backward
    frees the chunk's graph before the next is built; the caller zeroes and applies the gradients.

    on_policy: the parameters are still those the chains were sampled with (sampled with score_graph, no optimizer
    step since), so the means are the sampling pass's own, `trajectory.mean_graphs`, and no step is re-evaluated.
    There rho_s = 1 and the clipped surrogate's gradient is -A_s grad log pi_theta, the re-evaluated one.

    advantages: (B,), the same for every step (the chain's normalised return), or (B, N), one column per step.
    reference: the frozen policy of the KL term, or None (no KL, and no reference passes).
    average: divide by the number of steps (a mean over steps) instead of summing them.
    chunk: steps per network call (1: a call per step); the call's activations grow with it.
    guard: GRPO-Guard's regulated ratio and 1 / dt_s step weights (a flow model's chain: its timesteps are times).
    trust_region: what bounds the move from the sampling policy (RatioClip or KLMask).
    kl_gate: (B,) bool, the chains the KL term is taken over (GARDO's gate; none: the term is 0); None: every chain.
    share: these chains' share of the minibatch whose mean the loss is (group_update's parts): the backward weighs
    each step's terms, means over these chains, by it; the diagnostics stay these chains' own.
    Returns per-step diagnostics: loss, ratio_dev (mean |rho - 1|), the ratio's mean, variance and largest |rho - 1|
    over the step's chains (ratio_mean, ratio_var, ratio_max_dev: ppo_epochs pools them per pass), the share of terms
    outside the trust region (clip_frac or mask_frac) and kl where there is a reference.
    """
    if trajectory.log_probs is None:
        raise ValueError("a policy gradient needs stochastic steps; every step of this chain is deterministic")
    sampled_log_probs = trajectory.log_probs
    stats: dict[str, list[float]] = {"loss": [], "ratio_dev": [], trust_region.outside: [], "kl": []}
    stats.update({name: [] for name in RATIO_MOMENTS})
    divisor = len(steps) if average else 1
    for first in range(0, len(steps), chunk):
        group = steps[first : first + chunk]
        means = [trajectory.mean_graphs[s] for s in group] if on_policy else policy.step_means(trajectory, group)
        if reference is not None:
            with torch.no_grad():
                reference_means = reference.step_means(trajectory, group)
        losses = []
        for i, (s, mean) in enumerate(zip(group, means, strict=True)):
            std = float(trajectory.stds[s])
            log_prob = gaussian_log_prob(trajectory.latents[:, s + 1], mean, std)
            step_advantages = advantages if advantages.dim() == 1 else advantages[:, s]
            old_log_prob, weight = sampled_log_probs[:, s], 1.0
            if guard:
                log_prob = guarded_log_ratio(log_prob, old_log_prob, mean, trajectory.means[:, s], std)
                old_log_prob, weight = torch.zeros_like(log_prob), 1 / step_length(trajectory, s)
            gaussians = (mean, trajectory.means[:, s], std)
            loss, ratio, outside = trust_region.surrogate(log_prob, old_log_prob, step_advantages, gaussians)
            loss = weight * loss
            if reference is not None:
                divergence = closed_form("kl", mean, std, reference_means[i], std)
                gated = divergence if kl_gate is None else divergence[kl_gate]
                kl = gated.mean() if gated.numel() else divergence.new_zeros(())
                loss = loss + kl_coef * kl
                stats["kl"].append(kl.item())
            losses.append(loss)
            stats["loss"].append(loss.item())
            stats["ratio_dev"].append((ratio - 1).abs().mean().item())
            exact = ratio.detach().double()  # a first pass's ratio is 1 to float error: its spread needs float64
            stats["ratio_mean"].append(exact.mean().item())
            stats["ratio_var"].append(exact.var(unbiased=False).item())
            stats["ratio_max_dev"].append((exact - 1).abs().max().item())
            stats[trust_region.outside].append(outside.float().mean().item())
        (torch.stack(losses).sum() * share / divisor).backward()
    return stats


RATIO_MOMENTS = ("ratio_mean", "ratio_var", "ratio_max_dev")
"""ppo_chain_backward's per-step moments of the ratio, which ppo_epochs pools over each pass (ratio_moments)."""


@dataclass
class FirstPass:
    """The first optimizer step of an iteration taken on the sampling pass a part of the chains at a time
    (PolicyGradientTrainer.group_update), for ppo_epochs to apply: the order its minibatches visit the chains in, the
    steps it trains, and ppo_chain_backward's per-step diagnostics pooled over the parts, as one call over every
    chain would give them; the gradient waits in the parameters' .grad."""

    order: Tensor
    steps: list[int]
    stats: dict[str, list[float]] = field(default_factory=dict)
    chains: int = 0

    def add(self, stats: dict[str, list[float]], chains: int) -> None:
        """Pools a part's per-step diagnostics (over `chains` chains) into those so far: the means weighed by the
        chains (a step's loss, ratio_dev, trust-region share and KL are means over its chains), the ratio's variance
        pooled with its mean's spread, its largest deviation the largest."""
        if not self.chains:
            self.stats, self.chains = {name: list(values) for name, values in stats.items()}, chains
            return
        total = self.chains + chains
        old, new = self.chains / total, chains / total
        pooled = {}
        for name, values in stats.items():
            held = self.stats[name]
            if name == "ratio_max_dev":
                pooled[name] = [max(a, b) for a, b in zip(held, values, strict=True)]
            elif name == "ratio_var":
                means = zip(self.stats["ratio_mean"], stats["ratio_mean"], strict=True)
                pooled[name] = [
                    old * a + new * b + old * new * (ma - mb) ** 2
                    for a, b, (ma, mb) in zip(held, values, means, strict=True)
                ]
            else:
                pooled[name] = [old * a + new * b for a, b in zip(held, values, strict=True)]
        self.stats, self.chains = pooled, total


def draw_steps(generator: torch.Generator, stochastic: list[int], step_fraction: float | None) -> list[int]:
    """The steps a minibatch trains: a random `step_fraction` of the chain's `stochastic` steps (steps_trained of
    them) in a random order drawn from `generator`; None: every one in the chain's order, nothing drawn."""
    if step_fraction is None:
        return stochastic
    draw = torch.randperm(len(stochastic), generator=generator)[: steps_trained(step_fraction, len(stochastic))]
    return [stochastic[i] for i in draw.tolist()]


def ratio_moments(steps: dict[str, list[float]], prefix: str) -> dict[str, float]:
    """The ratio's mean, std and largest |rho - 1| over every term of the steps whose per-step RATIO_MOMENTS `steps`
    holds (each step over the same number of chains: the pooled variance is the mean of the steps' variances plus the
    variance of their means), named `<prefix>_mean`, `<prefix>_std`, `<prefix>_max_dev`; nothing where no step was
    trained."""
    means = steps["ratio_mean"]
    if not means:
        return {}
    mean = sum(means) / len(means)
    spread = sum(steps["ratio_var"]) / len(means) + sum((m - mean) ** 2 for m in means) / len(means)
    return {f"{prefix}_mean": mean, f"{prefix}_std": spread**0.5, f"{prefix}_max_dev": max(steps["ratio_max_dev"])}


def step_length(trajectory: Trajectory, step: int) -> float:
    """dt of a flow chain's step: from its time to the next (0 after the last)."""
    times = trajectory.timesteps
    return float(times[step]) - (float(times[step + 1]) if step + 1 < len(times) else 0.0)


def steps_trained(step_fraction: float, actions: int) -> int:
    """The stochastic steps of each chain an update trains on: a `step_fraction` of its `actions`, at least one."""
    return max(1, round(step_fraction * actions))


def ppo_usage(config: PolicyGradientOptions, images: int, steps: int, trained: int) -> dict[str, float]:
    """What one iteration of the methods that run ppo_epochs costs: sampling `images` chains of `steps` steps, then per
    epoch (config.inner_epochs) a forward and a backward of `trained` steps of each chain, and the reference's forward
    of each where config.kl_weight > 0; with config.reuse_sampling_pass the first epoch's forward is the sampling's."""
    reference = images * trained if config.kl_weight > 0 else 0
    reused = images * trained if config.reuse_sampling_pass else 0
    return {
        "nfe": images * steps + config.inner_epochs * (images * trained * 3 + reference) - reused,
        "reward_queries": images,
        "samples": images,
    }


def check_sampling_pass_reuse(config: PolicyGradientOptions) -> None:
    """Refuses a PPO config whose `reuse_sampling_pass` could not pay: the sampling pass's graph serves the first
    optimizer step only, and a backward through it runs over every chain it was built on, so one minibatch must hold
    every chain of the iteration (config.minibatch >= prompts_per_iter * samples_per_prompt); and a `reuse_groups`
    without the reuse, or on a method whose advantages read the whole batch."""
    method = type(config).__module__.rpartition(".")[2]
    chains = config.prompts_per_iter * config.samples_per_prompt
    if config.reuse_sampling_pass and config.minibatch < chains:
        raise ValueError(
            f"{method}.reuse_sampling_pass needs one minibatch of every chain: {method}.minibatch "
            f"({config.minibatch}) must be at least prompts_per_iter x samples_per_prompt ({chains})"
        )
    if config.reuse_groups is not None and not config.reuse_sampling_pass:
        raise ValueError(f"{method}.reuse_groups parts the reused sampling pass: set {method}.reuse_sampling_pass too")
    if config.reuse_groups is not None and not config.groups_apart:
        raise ValueError(
            f"{method}.reuse_groups needs each group's advantages from its own rewards; {method}'s read the whole "
            "batch: leave it unset"
        )


def ppo_epochs(
    trainer: PolicyGradientTrainer,
    trajectory: Trajectory,
    advantages: torch.Tensor,
    *,
    step_fraction: float | None = 1.0,
    guard: bool = False,
    summed: bool = False,
    kl_gate: torch.Tensor | None = None,
    first: FirstPass | None = None,
) -> dict[str, float]:
    """PPO's update of one iteration, as DDPO and the GRPO papers make it: config.inner_epochs passes over the
    trajectories in random minibatches of config.minibatch chains (over all processes), each an optimizer step of
    L(theta) over the trained steps of each chain.

    advantages: (B,), one per chain and the same at every step (a normalised return), or (B, N), one per chain and
    step of the trajectory's N steps (Scores-as-Actions' value increments).
    step_fraction: train a random `step_fraction` of each chain's stochastic steps, drawn anew per minibatch (DDPO's
    timestep subsampling, DanceGRPO's timestep selection; 1.0 draws them all in a random order); None: every
    stochastic step in the chain's order, with nothing drawn.
    guard: GRPO-Guard's regulated ratio (ppo_chain_backward). summed: the steps' terms are summed (a continuous-time
    objective's Riemann sum) instead of averaged. kl_gate: (B,) bool, the chains the KL term is taken over
    (ppo_chain_backward); None: every chain. first: the first optimizer step, taken already on the sampling pass a
    part at a time (group_update): its order and steps are the first epoch's, its gradient is applied as it is.
    The KL term weighs config.kl_weight against trainer.reference; with config.reuse_sampling_pass the first optimizer
    step differentiates the sampling pass of a trajectory sampled with score_graph (or `first` holds it). Returns the
    diagnostics' means over every trained step; where `summed`, loss and kl are each minibatch's sums over its steps,
    averaged over the minibatches. The ratio's moments are reported per pass: ratio_first_* over the first optimizer
    step, whose ratio is 1 but for float error (the parameters are the sampling's), and ratio_later_* over the rest
    (ratio_moments)."""
    cfg = trainer.config
    stats: dict[str, list[float]] = {"ratio_dev": [], cfg.trust_region.outside: [], "kl": [], "loss": []}
    passes: dict[str, dict[str, list[float]]] = {name: {m: [] for m in RATIO_MOMENTS} for name in ("first", "later")}
    for epoch in range(cfg.inner_epochs):
        order = first.order if first is not None and epoch == 0 else None
        for batch, index in enumerate(trainer.minibatches(len(trajectory.prompts), cfg.minibatch, order=order)):
            if first is not None and epoch == batch == 0:
                step_stats = first.stats
            else:
                part = trajectory.subset(index)
                steps = draw_steps(trainer.generator, part.stochastic_steps, step_fraction)
                trainer.zero_gradients()
                step_stats = ppo_chain_backward(
                    trainer.policy,
                    trainer.reference,
                    part,
                    steps,
                    advantages[index],
                    cfg.trust_region,
                    cfg.kl_weight,
                    average=not summed,
                    chunk=cfg.steps_per_call,
                    guard=guard,
                    on_policy=cfg.reuse_sampling_pass and epoch == batch == 0,
                    kl_gate=None if kl_gate is None else kl_gate[index],
                )
            moments = passes["first" if epoch == batch == 0 else "later"]
            for name, values in step_stats.items():
                if name in moments:
                    moments[name] += values
                else:
                    # a summed objective's loss and KL (the path KL) are its minibatch's sums over the steps
                    stats[name] += [sum(values)] if summed and name in ("loss", "kl") and values else values
            trainer.apply_gradients(cfg.max_grad_norm)
    summary = {name: sum(values) / len(values) for name, values in stats.items() if values}
    for name, moments in passes.items():
        summary.update(ratio_moments(moments, f"ratio_{name}"))
    return summary
