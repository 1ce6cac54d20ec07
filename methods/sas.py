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
grid's points. The update is the toolkit's (methods/toolkit/policy_gradient.py: ppo_epochs) with every step of the
grid in order and the steps' terms summed, so the shared options inner_epochs and reuse_sampling_pass apply here too
(1 and off by default, as the recorded runs ran).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.options import Interval, option
from methods.toolkit.policy_gradient import PolicyGradientTrainer, RatioClipOptions, ppo_epochs, ppo_usage
from methods.trainer import chain_work
from models.sampler import Sampler

GRIDS = ("stratified", "fixed")


@dataclass(frozen=True)
class Config(RatioClipOptions):
    """Scores-as-Actions' options: the policy-gradient ones (methods/toolkit/policy_gradient.py), the training grid
    and the path KL's weight beta."""

    groups_apart: ClassVar[bool] = False  # its advantages are value increments along a chain, not group-relative

    grid: str = "stratified"
    """stratified: a new grid every iteration, one time drawn in each of N equal strata; fixed: the sampler's own
    N-step grid every time (as discrete-time methods train)."""
    beta: float = option(0.01, at_least=0)
    """Weight of the path KL to the frozen base model (0 disables it and its reference passes)."""
    # added to sas after its runs were recorded: at 1 it stays out of their identity
    inner_epochs: int = option(1, at_least=1, added=True)
    learning_rate: float = option(3e-6, above=0)
    """AdamW learning rate. Per-step terms are summed over the grid, not averaged as DDPO's are; measured on
    `digit` with 20 steps, 1e-5 and 3e-5 lose judge accuracy and FID, 3e-6 gains on both."""

    def __post_init__(self):
        super().__post_init__()
        if self.grid not in GRIDS:
            raise ValueError(f"sas.grid must be one of {', '.join(GRIDS)}; got {self.grid!r}")

    @property
    def kl_weight(self) -> float:
        return self.beta


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


class ScoresAsActions(PolicyGradientTrainer):
    name = "sas"
    # 2: the trained steps' re-evaluation is batched, steps_per_call to a network call (float sums reordered)
    version = "2"
    Config = Config
    config: Config
    families = ("diffusion",)
    search_space = {
        "learning_rate": Interval(3e-7, 3e-5, log=True),
        "beta": Interval(1e-3, 0.1, log=True),
        "clip_range": Interval(0.02, 0.5, log=True),
    }
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "minibatch": 4}

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # PPO's update over every step, and the value reads the reward of every step's prediction and of the image
        images, steps, actions = chain_work(config, generator)
        return {**ppo_usage(config, images, steps, actions), "reward_queries": images * (steps + 1)}

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
            # DDIM at eta = 1, DDPM's posterior step: the Euler-Maruyama step the objective is written for
            trajectory = self.policy.sample(
                prompts, self.training_grid(), self.generator, Sampler(noise=1.0), score_graph=cfg.reuse_sampling_pass
            )
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
        # every step of the grid, its terms summed: the Riemann sum of the time integral
        summary = ppo_epochs(self, trajectory, advantages, step_fraction=None, summed=True)
        return {"reward": values[:, -1].mean().item(), **summary}
