"""Latent-consistency-style models: the consistency function, its multistep sampler, and its losses.

Parameterization and schedule follow diffusers' `LCMScheduler` (so it is the tests' oracle): the
network predicts the noise eps, and the consistency function is
  f_theta(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat,   x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
  c_skip = s_d^2 / ((10 t)^2 + s_d^2),  c_out = 10 t / sqrt((10 t)^2 + s_d^2),  s_d = 0.5,
so that f(x, 0) = x (the boundary condition). The model is trained on a grid of `ORIGINAL_STEPS`
timesteps 19, 39, ..., 999 (LCM's skipping step k = 20), which `GRID` extends with t = 0.

Multistep sampling over S timesteps chosen from the grid: x_{tau_1} ~ N(0, I); each step predicts
x0 = f(x_{tau_i}, tau_i) and re-noises it to the next timestep, x_{tau_{i+1}} ~ N(sqrt(a_next) x0,
(1 - a_next) I), so every step but the last is a Gaussian transition (an action, for policy-gradient
methods and divergences); the last step returns x0 itself, deterministically, as in LCM and RLCM. The
noise is the schedule's: the dynamics `consistency` (models/sampler.py) reads no noise level.
"""

from __future__ import annotations

import math

import torch

from models.diffusion import add_noise
from models.policy import ChainPolicy, Transition, reduce_per_image

ORIGINAL_STEPS = 50
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5


def distillation_grid(num_train_timesteps: int = 1000) -> torch.Tensor:
    """0 and LCM's `ORIGINAL_STEPS` training timesteps, ascending: (ORIGINAL_STEPS + 1,) int64."""
    k = num_train_timesteps // ORIGINAL_STEPS
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(1, ORIGINAL_STEPS + 1) * k - 1])


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t) for timesteps t (B,) -> two (B,) float64 tensors."""
    scaled = t.double() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def consistency_output(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alpha_bar_t: torch.Tensor
) -> torch.Tensor:
    """f(x_t, t) from the network's noise prediction. x_t, eps: (B, ...); t, alpha_bar_t: (B,)."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a = alpha_bar_t.to(x_t.device, x_t.dtype).view(shape)
    c_skip, c_out = (c.to(x_t.device, x_t.dtype).view(shape) for c in boundary_scalings(t))
    x0_hat = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    return c_skip * x_t + c_out * x0_hat


class ConsistencyPolicy(ChainPolicy):
    """A consistency model sampled with LCM's multistep sampler (1 to `ORIGINAL_STEPS` steps)."""

    family = "consistency"
    default_steps = 4
    loss_nfe = 4  # consistency training's target is a no-grad forward of the EMA target network
    dynamics = ("consistency",)

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        if not 1 <= steps <= ORIGINAL_STEPS:
            raise ValueError(f"a consistency model samples with 1 to {ORIGINAL_STEPS} steps, got {steps}")
        grid = distillation_grid(self.schedule.num_train_timesteps)[1:].flip(0)
        # LCMScheduler's choice of (approximately) evenly spaced grid points
        index = torch.floor(torch.linspace(0, ORIGINAL_STEPS, steps + 1, dtype=torch.float64)[:-1]).long()
        return grid[index]

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, network=None) -> torch.Tensor:
        """f_theta(x_t, t) for per-sample timesteps t (B,); `network` overrides the policy's own."""
        eps = self.predict(x, t.to(x.device), text, network)
        return consistency_output(x, eps, t, self.alphas_cumprod[t].to(x.device))

    def step_output(self, x, t, text):
        """f_theta(x_t, t), the consistency function's x0."""
        return self.predict_x0(x, t, text)

    def transition_from(self, x, output, step, timesteps, noise, dynamics):
        x0 = output
        if step + 1 == len(timesteps):
            # A tiny final noise (the schedule's smallest, ~0.01) would make this step an action too, but its
            # log-probability gradient is ~100x the other steps' and swamps PPO (measured: 18-35% of ratios
            # clipped, against 5% without it); the reward sees x0, so the step is deterministic.
            return Transition(x0, 0.0, x0)
        a_next = float(self.alphas_cumprod[int(timesteps[step + 1])])
        return Transition(math.sqrt(a_next) * x0, math.sqrt(1 - a_next), x0)

    def loss(self, images, prompts, generator, weights=None):
        """Consistency training (Song et al. 2023), the teacher-free loss for fine-tuning on images:
        E ||f_theta(x_{t_n}, t_n) - sg[f_theta(x_{t_{n-1}}, t_{n-1})]||^2 over adjacent grid timesteps, both
        noised with the same eps, so that the model's own low-noise prediction (anchored by f(x, 0) = x)
        is the target."""
        return reduce_per_image(self._squared_errors(images, prompts, generator), weights)

    def training_errors(self, images, prompts, generator):
        return self._squared_errors(images, prompts, generator).flatten(1).mean(dim=1)

    def _squared_errors(self, images, prompts, generator) -> torch.Tensor:
        x0 = self.encode(images)
        grid = distillation_grid(self.schedule.num_train_timesteps)
        n = torch.randint(1, len(grid), (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        text = self._text(prompts)
        t_high, t_low = grid[n], grid[n - 1]
        with torch.no_grad():
            target = self.predict_x0(add_noise(x0, noise, self.alphas_cumprod[t_low].to(self.device)), t_low, text)
        prediction = self.predict_x0(add_noise(x0, noise, self.alphas_cumprod[t_high].to(self.device)), t_high, text)
        return (prediction - target) ** 2
