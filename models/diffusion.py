"""Epsilon-prediction diffusion: the noise schedule and the DDIM transition as pure functions.

Conventions follow Stable Diffusion's scheduler config in diffusers (so that diffusers' own
`DDIMScheduler` is an independent oracle for the tests): a 1000-step beta schedule (linear, DDPM's, for the
embedded models; scaled_linear, Stable Diffusion's own),
"leading" timestep spacing with `steps_offset = 1`, `set_alpha_to_one = False` (the last step
lands on alpha_bar[0], not 1, so every step of a stochastic chain keeps a non-zero std and a
finite log-probability) and no sample clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclass(frozen=True)
class NoiseSchedule:
    """Betas from beta_start to beta_end over `num_train_timesteps`: DDPM's linear schedule by default."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    steps_offset: int = 1
    beta_schedule: str = "linear"
    """linear: betas evenly spaced (DDPM); scaled_linear: sqrt(beta) evenly spaced (Stable Diffusion and its
    latent consistency models, with beta_start 0.00085 and beta_end 0.012), as diffusers' schedulers name them."""

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t for t = 0..T-1, float64 for exactness, shape (T,)."""
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        else:
            betas = (
                torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps, dtype=torch.float64)
                ** 2
            )
        return torch.cumprod(1.0 - betas, dim=0)

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """The `steps` timesteps a DDIM sampler visits, descending, shape (steps,), int64."""
        # with the offset, a grid of more steps would start past the last timestep
        if not 1 <= steps <= self.num_train_timesteps - self.steps_offset:
            raise ValueError(f"steps must be in [1, {self.num_train_timesteps - self.steps_offset}], got {steps}")
        ratio = self.num_train_timesteps // steps
        return (torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio) + self.steps_offset

    def jittered_timesteps(self, steps: int, generator: torch.Generator) -> torch.Tensor:
        """A random grid of `steps` timesteps, descending, (steps,) int64: one timestep drawn uniformly in each
        of the DDIM grid's strata [k * ratio + steps_offset, (k + 1) * ratio) (stratified sampling of the time
        axis: the steps' lengths vary from draw to draw around ratio = 1000 // steps)."""
        self.sampling_timesteps(steps)  # validates steps
        ratio = self.num_train_timesteps // steps
        offsets = torch.randint(self.steps_offset, max(ratio, self.steps_offset + 1), (steps,), generator=generator)
        return torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + offsets


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: int) -> float:
    """alpha_bar_t, with t < 0 meaning the end of the chain (alpha_bar_0, as set_alpha_to_one=False)."""
    return float(alphas_cumprod[t] if t >= 0 else alphas_cumprod[0])


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0). x0, noise: (B, ...); alpha_bar: (B,)."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = alpha_bar.to(x0.dtype).view(shape)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """Tweedie's estimate of x_0 from x_t and the predicted noise: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    return (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


def epsilon_from_data(alphas_cumprod: torch.Tensor, floor: float = 0.05):
    """For a network that predicts the clean image x0 at x_t (JiT's data prediction, Li and He 2025, arXiv
    2511.13720): (x_t, t (B,), x0) -> its noise eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), with sqrt(1 - a_t)
    held at least `floor` where the division would blow up (the first timesteps)."""
    alphas = alphas_cumprod.float()

    def epsilon(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = alphas.to(x_t.device)[t.long()].view(-1, *(1,) * (x_t.dim() - 1))
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=floor)

    return epsilon


def ddim_transition(
    x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float, eta: float
) -> tuple[torch.Tensor, float]:
    """Mean and std of the DDIM transition p(x_prev | x_t) (Song et al. 2021, eq. 12).

    x_t, eps: (B, ...). Returns mean (B, ...) and the scalar std sigma_t, where
    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).
    eta = 0 is the deterministic DDIM sampler, eta = 1 the DDPM posterior variance.
    """
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    std = eta * math.sqrt(max(variance, 0.0))
    x0_pred = predict_x0(x_t, eps, alpha_bar_t)
    direction = math.sqrt(max(1 - alpha_bar_prev - std**2, 0.0)) * eps
    return math.sqrt(alpha_bar_prev) * x0_pred + direction, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over all but the batch dimension: (B, ...) -> (B,)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    per_dim = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return per_dim.flatten(1).sum(dim=1)
