"""`adjoint_matching`: Adjoint Matching (Domingo-Enrich et al., "Adjoint Matching: Fine-tuning Flow and Diffusion
Generative Models with Memoryless Stochastic Optimal Control", ICLR 2025, arXiv 2409.08861).

Fine-tuning as stochastic optimal control, whose solution is the reward-tilted distribution
p*(x) proportional to p_base(x) exp(lambda r(x)). Written in the paper's time tau = 1 - t (tau = 0 noise,
tau = 1 data; this suite's flow runs t from 1 to 0), with x_tau = tau x_data + (1 - tau) eps, the memoryless noise
schedule of this path is sigma(tau)^2 = 2 (1 - tau) / tau, and the fine-tuned model samples
  dX = b_theta(X, tau) dtau + sigma(tau) dB,   b(x, tau) = 2 v^tau(x, tau) - x / tau,
whose end point is independent of its start (memoryless): this is the DDIM-form sampler at eta = 1 of models/flow.py
(the posterior step), so the chains are drawn with it. On such a chain (no gradients), the lean adjoint solves
backwards from the reward's gradient,
  a(1) = -lambda grad_x r(X_1),   da/dtau = -a^T grad_x b_base(X_tau, tau) = a^T (2 grad_x v_base + I / tau)
(in this suite's velocity v = dx/dt = -v^tau), by explicit Euler steps from each known point,
  a_k = a_{k+1} - h_k (2 J_{k+1}^T a_{k+1} + a_{k+1} / tau_{k+1}),   J_{k+1} = grad_x v_base(X_{k+1}, t_{k+1}),
one vector-Jacobian product of the base network per step. The loss regresses the fine-tuned velocity onto the
base's corrected by the adjoint,
  L(theta) = E sum_k || v_theta(X_k, t_k) - [ v_base(X_k, t_k) + (t_k / (1 - t_k)) a_k ] ||^2,
the paper's ||u + sigma a||^2 with u = 2 (v^tau_theta - v^tau_base) / sigma, divided by its time weight 4 / sigma^2.

Departures from the paper: the per-time weight 4 / sigma(t)^2 is dropped (each time's term has the same minimiser
either way, and the weight diverges as sigma -> 0 at the data end); the loss runs over a random `step_fraction` of
the chain's interior states (never its first state, pure noise at tau = 0 where sigma is infinite, nor its last);
the flow family only (the diffusion family's memoryless sampler is DDPM's, whose lean adjoint in the
noise-prediction parametrisation is not built here). The reward is differentiable, as the adjoint needs its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from methods.options import Interval, Options, option
from methods.toolkit.policy_gradient import steps_trained
from methods.trainer import Trainer, chain_work, make_optimizer
from models.policy import FlowMatchingPolicy
from models.sampler import Sampler


@dataclass(frozen=True)
class Config(Options):
    prompts_per_iter: int = option(8, at_least=1)
    """Distinct train prompts per iteration."""
    samples_per_prompt: int = option(2, at_least=1)
    """Memoryless chains per prompt."""
    sample_steps: int | None = option(None, at_least=2)
    """Steps of each chain; None: the model's default."""
    reward_scale: float = option(10.0, above=0)
    """lambda: the tilt's strength, p* ~ p_base exp(lambda r)."""
    step_fraction: float = option(0.5, above=0, at_most=1)
    """The share of the chain's interior states the regression runs over, drawn each iteration."""
    minibatch: int = option(16, at_least=1)
    """Chains per optimizer step."""
    learning_rate: float = option(1e-5, above=0)
    """AdamW learning rate."""
    max_grad_norm: float = option(1.0, above=0)
    """Gradient clipping threshold (L2 norm)."""


def lean_adjoint(
    terminal: torch.Tensor, times: torch.Tensor, transpose_jacobian: Callable[[int, torch.Tensor], torch.Tensor]
) -> dict[int, torch.Tensor]:
    """The lean adjoint a_k at the chain's interior states k = 1 .. N - 1, from a_N = `terminal` (B, ...) at t = 0:
    `times` (N,) the chain's descending flow times t_0 = 1 .. t_{N-1} (t_N = 0), `transpose_jacobian(k, a)` the
    product J_k^T a of the base velocity's Jacobian at state k (for k = 2 .. N)."""
    steps = len(times)
    t = [float(x) for x in times] + [0.0]
    adjoint = {steps: terminal}
    for k in range(steps - 1, 0, -1):
        a, tau = adjoint[k + 1], 1.0 - t[k + 1]
        adjoint[k] = a - (t[k] - t[k + 1]) * (2 * transpose_jacobian(k + 1, a) + a / tau)
    del adjoint[steps]
    return adjoint


def regression_target(v_base: torch.Tensor, adjoint: torch.Tensor, t: float) -> torch.Tensor:
    """v_base + (t / (1 - t)) a: the velocity the fine-tuned model regresses at flow time t (0 < t < 1)."""
    return v_base + (t / (1 - t)) * adjoint


class AdjointMatching(Trainer):
    name = "adjoint_matching"
    version = "1"
    Config = Config
    needs_differentiable_reward = True
    families = ("flow",)
    search_space = {"learning_rate": Interval(1e-6, 1e-4, log=True), "reward_scale": Interval(1.0, 100.0, log=True)}
    small_config = {"prompts_per_iter": 2, "samples_per_prompt": 2, "sample_steps": 4, "minibatch": 4}
    policy: FlowMatchingPolicy

    @classmethod
    def step_usage(cls, config: Config, generator: type) -> dict[str, float]:
        # the chain; the base's VJPs at states N .. 2 and its forward at state 1; the regression's forward + backward
        images, steps, _ = chain_work(config, generator)
        regressed = steps_trained(config.step_fraction, steps - 1)
        nfe = images * (steps + 3 * (steps - 1) + 1 + 3 * regressed)
        return {"nfe": nfe, "reward_queries": images, "samples": images}

    def __init__(self, policy: FlowMatchingPolicy, reward, prompts, config: Config, seed: int):
        super().__init__(policy, reward, prompts, config, seed)
        self.optimizer = make_optimizer(policy.trainable_parameters(), config.learning_rate)
        self.base = policy.frozen_copy()

    def step(self) -> dict[str, float]:
        cfg = self.config
        prompts = self.prompt_batch(cfg.prompts_per_iter, cfg.samples_per_prompt)
        steps = self.sampler_steps(cfg.sample_steps)
        with torch.no_grad():
            chain = self.policy.sample(prompts, steps, self.generator, Sampler(noise=1.0))  # memoryless
        final = chain.latents[:, -1].detach().requires_grad_(True)
        rewards = self.reward(self.policy.decode(final), prompts)
        (reward_gradient,) = torch.autograd.grad(rewards.sum(), final)
        times = chain.timesteps
        base_velocity: dict[int, torch.Tensor] = {}

        def transpose_jacobian(k: int, a: torch.Tensor) -> torch.Tensor:
            return self._base_vjp(chain.latents[:, k], _time(times, k), prompts, a, base_velocity, k)

        adjoint = lean_adjoint(-cfg.reward_scale * reward_gradient.detach(), times, transpose_jacobian)
        with torch.no_grad():  # state 1's base velocity: its VJP is not needed (a_0 is not)
            base_velocity[1] = self.base.velocity(chain.latents[:, 1], _time(times, 1).expand(len(prompts)), prompts)
        interior = list(range(1, steps))
        draw = torch.randperm(len(interior), generator=self.generator)[
            : steps_trained(cfg.step_fraction, len(interior))
        ]
        chosen = [interior[i] for i in draw.tolist()]
        losses = []
        for index in self.minibatches(len(prompts), cfg.minibatch):
            batch_prompts = [prompts[i] for i in index.tolist()]
            self.zero_gradients()
            for k in chosen:
                t = float(times[k])
                target = regression_target(base_velocity[k][index], adjoint[k][index], t)
                velocity = self.policy.velocity(
                    chain.latents[index, k], _time(times, k).expand(len(index)), batch_prompts
                )
                loss = (velocity - target).pow(2).flatten(1).mean(dim=1).mean() / len(chosen)
                loss.backward()
                losses.append(loss.item() * len(chosen))
            self.apply_gradients(cfg.max_grad_norm)
        return {"reward": rewards.mean().item(), "loss": sum(losses) / len(losses)}

    def _base_vjp(self, x: torch.Tensor, t: torch.Tensor, prompts: list[str], a: torch.Tensor, keep: dict, k: int):
        """J^T a for the base velocity at states x (B, ...) and time t, keeping v_base (detached) in keep[k]."""
        x = x.detach().requires_grad_(True)
        velocity = self.base.velocity(x, t.expand(len(x)), prompts)
        (product,) = torch.autograd.grad(velocity, x, grad_outputs=a)
        keep[k] = velocity.detach()
        return product


def _time(times: torch.Tensor, k: int) -> torch.Tensor:
    """Flow time t_k of the chain's state k (t_N = 0 after the last step), as a 0-d tensor."""
    return times[k] if k < len(times) else torch.zeros((), dtype=times.dtype)
