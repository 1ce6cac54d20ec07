"""`sas`: Scores as Actions, continuous-time RL fine-tuning of a diffusion model (Zhao et al., "Scores as
Actions", arXiv 2409.08400, and "Score as Action: Fine-Tuning Diffusion Generative Models by Continuous-time
Reinforcement Learning", ICML 2025, arXiv 2502.01819).

The reverse-time SDE dX = [-f(T-t, X) + g(T-t)^2 a] dt + g(T-t) dB is a controlled process whose action a is the
score; the policy is Gaussian around the fine-tuned score network, and the objective is the terminal reward
minus the KL between the fine-tuned and the reference path measures, by Girsanov an integral of the drifts' gap:
  J(theta) = E[r(X_T)] - beta * E int_0^T (g^2 / 2) ||a_theta(t, X_t) - a_ref(t, X_t)||^2 dt.
Its continuous-time policy gradient with a value function V (the martingale form of Jia and Zhou, which the
papers build on) weighs the action's score function by the value's increment along the path:
  grad J = E int grad_theta log pi_theta(a_t | t, X_t) dV(t, X_t) - beta grad KL.
The loss below takes the time grid t_0 > ... > t_N as an input and is that integral's estimate on it: the
policy's step is the Euler-Maruyama (DDPM, DDIM eta = 1) transition N(mu_theta(x_k), sigma_k^2 I), whose
log-density's gradient carries the action's, and each step's advantage is the value increment
  A_k = V(t_{k+1}, x_{k+1}) - V(t_k, x_k),     sum_k A_k = r(x_0) - V(t_0, x_{t_0})   (it telescopes),
so the objective has the same scale on a grid of 10 steps or 40 (DDPO gives every step the whole return).
The KL term is the sum of the steps' closed-form Gaussian KLs, ||mu_theta - mu_ref||^2 / (2 sigma_k^2) =
(g^2 dt / 2) ||a_theta - a_ref||^2: the Riemann sum of the Girsanov integral (per dimension, as
methods/toolkit/divergences.py normalizes divergences).
The value function uses the diffusion model's structure, as the papers propose: V(t_k, x) = a_k r(x0_hat(t_k, x)) + c_k,
built on the reward of the model's own Tweedie prediction of the final image (which the sampler computes at
every step anyway; at the end of the chain it is the image), calibrated at each step by the least-squares line
to the outcome: a blurry early prediction's reward says little about the final image and gets a small slope.

Departures from the papers (no public code): the value is that two-parameter calibration per step, fitted on each
iteration's batch, not a trained network (measured: the raw Tweedie reward as the value, -30 at the first step against 0
at the last, drove the digits model to collapse within 45 iterations); the per-step surrogate is PPO's clipped one, so
minibatches after the first stay near the sampling policy (as DDPO does, so the two differ only in what is
continuous-time); advantages are divided by the batch's terminal-reward std, so one learning rate serves every reward;
the KL gradient is taken at the visited states (as DDPO's penalty), not through them. With `grid = "stratified"` every
iteration draws a new grid, one time uniformly in each of the N strata of the time axis: the time integral is estimated
by Monte Carlo, as a diffusion model's own training loss is, so the score is improved at every time and not only at one
grid's points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import Options, option
from methods.toolkit.policy_gradient import STEPS_PER_CALL, ppo_chain_backward
from methods.trainer import Trainer, chain_work, make_optimizer

GRIDS = ("stratified", "fixed")


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(8, at_least=2)
    """Trajectories per prompt."""
    sample_steps: int | None = option(None, at_least=1)
    """N, the steps of the training grid; None: the model's default (20)."""
    grid: str = "stratified"
    """stratified: a new grid every iteration, one time drawn in each of N equal strata; fixed: the sampler's own
    N-step grid every time (as discrete-time methods train)."""
    beta: float = option(0.01, at_least=0)
    """Weight of the path KL to the frozen base model (0 disables it and its reference passes)."""
    minibatch: int = option(16, at_least=1)
    """Trajectories per optimizer step."""
    steps_per_call: int = option(STEPS_PER_CALL, at_least=1)
    """Trained steps of a minibatch whose re-evaluation is batched into one network call (steps_per_call x minibatch
    states); lower it to bound memory, 1: a call per step. Batching only reorders float sums."""
    clip_range: float = option(0.2, above=0)
    """PPO ratio clipping epsilon, per step."""
    adv_clip: float = option(5.0, above=0)
    """Step advantages, in units of the batch's terminal-reward std, are clipped to [-adv_clip, adv_clip]."""
    learning_rate: float = option(3e-6, above=0)
    """AdamW learning rate. Per-step terms are summed over the grid, not averaged as DDPO's are; measured on
    `digit` with 20 steps, 1e-5 and 3e-5 lose judge accuracy and FID, 3e-6 gains on both."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""

    def __post_init__(self):
        super().__post_init__()
        if self.grid not in GRIDS:
            raise ValueError(f"sas.grid must be one of {', '.join(GRIDS)}; got {self.grid!r}")


def calibrated_values(predicted: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    """Values (B, N + 1) at the chain's states from the rewards of the Tweedie predictions (B, N) and the
    terminal rewards (B,): at each step, the least-squares line from the predicted reward to the terminal one,
    V_k = a_k r(x0_hat_k) + c_k with a_k clamped to [0, 1] (a blurry early prediction's reward barely
    predicts the outcome and gets a small slope; a sharp late one, a slope near 1); V_N is the reward itself."""
    centered = predicted - predicted.mean(dim=0, keepdim=True)
    outcome = (terminal - terminal.mean())[:, None]
    variance = (centered**2).mean(dim=0)
    slope = torch.where(variance > 0, (centered * outcome).mean(dim=0) / variance.clamp_min(1e-12), 0.0).clamp(0, 1)
    values = slope * centered + terminal.mean()
    return torch.cat([values, terminal[:, None]], dim=1)


def value_increments(values: torch.Tensor, scale: float, clip: float) -> torch.Tensor:
    """Step advantages (B, N) from the values (B, N + 1) at the chain's states x_{t_0} .. x_{t_N}:
    V_{k+1} - V_k divided by `scale` (the batch's terminal-reward std), clipped to [-clip, clip]."""
    return ((values[:, 1:] - values[:, :-1]) / scale).clamp(-clip, clip)


class ScoresAsActions(Trainer):
    name = "sas"
    # 2: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "2"
    Config = Config
    families = ("diffusion",)
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the value reads the reward of every step's prediction and of the image; the reference runs forward only
        images, steps, actions = chain_work(config, generator)
        reference = images * actions if config.beta > 0 else 0
        return {
            "nfe": images * steps + images * actions * 3 + reference,
            "reward_queries": images * (steps + 1),
            "samples": images,
        }

    def __init__(self, policy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.reference = policy.frozen_copy() if config.beta > 0 else None

    def training_grid(self) -> int | torch.Tensor:
        steps = self.sampler_steps(self.config.sample_steps)
        return (
            self.policy.schedule.jittered_timesteps(steps, self.generator)
            if self.config.grid == "stratified"
            else steps
        )

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        with torch.no_grad():
            trajectory = self.policy.sample(prompts, self.training_grid(), self.generator, eta=1.0)
            steps = len(trajectory.timesteps)
            predicted = (
                torch.stack(
                    [self.reward(self.policy.decode(trajectory.predictions[:, k]), prompts) for k in range(steps)],
                    dim=1,
                )
                .float()
                .cpu()
            )
            terminal = self.reward(trajectory.images, prompts).float().cpu()
        # the value's calibration and the advantages' scale are statistics of the whole batch, over all processes
        all_terminal = self.parallel.gather(terminal)
        values = self.parallel.local(calibrated_values(self.parallel.gather(predicted), all_terminal))
        scale = float(all_terminal.std(unbiased=False)) + 1e-6
        advantages = value_increments(values, scale, cfg.adv_clip)
        stats = {"ratio_dev": [], "clip_frac": [], "kl": []}
        order = torch.randperm(len(prompts), generator=self.generator)
        minibatch = self.parallel.share(cfg.minibatch, "sas.minibatch")
        for start in range(0, len(order), minibatch):
            index = order[start : start + minibatch]
            self._update(trajectory.subset(index), advantages[index], stats)
        summary = {name: sum(values) / len(values) for name, values in stats.items() if values}
        return {"reward": values[:, -1].mean().item(), **summary}

    def _update(self, part, advantages, stats) -> None:
        """One optimizer step on a minibatch: the per-step surrogates and KLs summed over the whole grid."""
        cfg = self.config
        self.zero_gradients()
        step_stats = ppo_chain_backward(
            self.policy,
            self.reference,
            part,
            part.stochastic_steps,
            advantages,
            cfg.clip_range,
            cfg.beta,
            average=False,
            chunk=cfg.steps_per_call,
        )
        stats["ratio_dev"] += step_stats["ratio_dev"]
        stats["clip_frac"] += step_stats["clip_frac"]
        if self.reference is not None:
            stats["kl"].append(sum(step_stats["kl"]))  # the path KL of the minibatch
        self.apply_gradients(cfg.max_grad_norm)
