"""Policy gradients over the sampling chain, shared by the methods that treat it as an MDP (ddpo, sas and the GRPO
family: flow_grpo, mix_grpo, dance_grpo).

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from methods.toolkit.divergences import closed_form
from models.diffusion import gaussian_log_prob

STEPS_PER_CALL = 10
"""The default of the methods' `steps_per_call`, the trained steps one network call re-evaluates. Measured on a
digits DDPO step (20 steps, minibatch 16, one thread): 1.50 s at 1, 0.76 s at 4, 0.67 s at 10, 0.62 s at 20;
10 keeps a call's activations to half a 20-step chain's."""


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

    A group whose rewards are all equal carries no preference and gets advantage 0.
    """
    grouped = rewards.view(groups, -1)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False)
    return (centered / (std + 1e-6)).clamp(-clip, clip).flatten()


def ppo_chain_backward(
    policy,
    reference,
    trajectory,
    steps: Sequence[int],
    advantages: torch.Tensor,
    clip_range: float,
    kl_coef: float,
    average: bool,
    chunk: int,
    guard: bool = False,
    on_policy: bool = False,
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
    Returns per-step diagnostics: loss, ratio_dev (mean |rho - 1|), clip_frac, and kl where there is a reference.
    """
    stats: dict[str, list[float]] = {"loss": [], "ratio_dev": [], "clip_frac": [], "kl": []}
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
            old_log_prob, weight = trajectory.log_probs[:, s], 1.0
            if guard:
                log_prob = guarded_log_ratio(log_prob, old_log_prob, mean, trajectory.means[:, s], std)
                old_log_prob, weight = torch.zeros_like(log_prob), 1 / step_length(trajectory, s)
            loss, ratio = ppo_clipped_loss(log_prob, old_log_prob, step_advantages, clip_range)
            loss = weight * loss
            if reference is not None:
                kl = closed_form("kl", mean, std, reference_means[i], std).mean()
                loss = loss + kl_coef * kl
                stats["kl"].append(kl.item())
            losses.append(loss)
            stats["loss"].append(loss.item())
            stats["ratio_dev"].append((ratio - 1).abs().mean().item())
            stats["clip_frac"].append(((ratio - 1).abs() > clip_range).float().mean().item())
        (torch.stack(losses).sum() / divisor).backward()
    return stats


def step_length(trajectory, step: int) -> float:
    """dt of a flow chain's step: from its time to the next (0 after the last)."""
    times = trajectory.timesteps
    return float(times[step]) - (float(times[step + 1]) if step + 1 < len(times) else 0.0)


def steps_trained(step_fraction: float, actions: int) -> int:
    """The stochastic steps of each chain an update trains on: a `step_fraction` of its `actions`, at least one."""
    return max(1, round(step_fraction * actions))


def ppo_usage(config, images: int, steps: int, trained: int) -> dict[str, float]:
    """What one iteration of the methods that run ppo_epochs costs: sampling `images` chains of `steps` steps, then per
    epoch (config.inner_epochs) a forward and a backward of `trained` steps of each chain, and the reference's forward
    of each where config.kl_coef > 0; with config.reuse_sampling_pass the first epoch's forward is the sampling's."""
    reference = images * trained if config.kl_coef > 0 else 0
    reused = images * trained if config.reuse_sampling_pass else 0
    return {
        "nfe": images * steps + config.inner_epochs * (images * trained * 3 + reference) - reused,
        "reward_queries": images,
        "samples": images,
    }


def check_sampling_pass_reuse(config) -> None:
    """Refuses a PPO config whose `reuse_sampling_pass` could not pay: the sampling pass's graph serves the first
    optimizer step only, and a backward through it runs over every chain it was built on, so one minibatch must hold
    every chain of the iteration (config.minibatch >= prompts_per_iter * samples_per_prompt)."""
    method = type(config).__module__.rpartition(".")[2]
    chains = config.prompts_per_iter * config.samples_per_prompt
    if config.reuse_sampling_pass and config.minibatch < chains:
        raise ValueError(
            f"{method}.reuse_sampling_pass needs one minibatch of every chain: {method}.minibatch "
            f"({config.minibatch}) must be at least prompts_per_iter x samples_per_prompt ({chains})"
        )


def ppo_epochs(
    trainer, trajectory, advantages: torch.Tensor, step_fraction: float = 1.0, guard: bool = False
) -> dict[str, float]:
    """PPO's update of one iteration, as DDPO and the GRPO papers make it: `inner_epochs` passes over the
    trajectories in random minibatches of `minibatch` chains (over all processes), each an optimizer step of L(theta)
    averaged over a random `step_fraction` of each chain's stochastic steps (DDPO's timestep subsampling, DanceGRPO's
    timestep selection); `guard`: GRPO-Guard's regulated ratio (ppo_chain_backward). The trainer's config gives
    inner_epochs, minibatch, steps_per_call, clip_range, kl_coef, max_grad_norm and reuse_sampling_pass (the first
    optimizer step differentiates the sampling pass of a trajectory sampled with score_graph), and
    `trainer.reference` the KL's frozen policy (None: no KL). advantages: (B,), one per chain. Returns the
    diagnostics' means over every trained step."""
    cfg = trainer.config
    trained = steps_trained(step_fraction, len(trajectory.stochastic_steps))
    stats: dict[str, list[float]] = {"ratio_dev": [], "clip_frac": [], "kl": [], "loss": []}
    for epoch in range(cfg.inner_epochs):
        order = torch.randperm(len(trajectory.prompts), generator=trainer.generator)
        size = trainer.parallel.share(cfg.minibatch, f"{trainer.name}.minibatch")
        for start in range(0, len(order), size):
            index = order[start : start + size]
            part = trajectory.subset(index)
            actions = part.stochastic_steps
            draw = torch.randperm(len(actions), generator=trainer.generator)[:trained]
            trainer.zero_gradients()
            step_stats = ppo_chain_backward(
                trainer.policy,
                trainer.reference,
                part,
                [actions[i] for i in draw.tolist()],
                advantages[index],
                cfg.clip_range,
                cfg.kl_coef,
                average=True,
                chunk=cfg.steps_per_call,
                guard=guard,
                on_policy=cfg.reuse_sampling_pass and epoch == start == 0,
            )
            for name, values in step_stats.items():
                stats[name] += values
            trainer.apply_gradients(cfg.max_grad_norm)
    return {name: sum(values) / len(values) for name, values in stats.items() if values}
