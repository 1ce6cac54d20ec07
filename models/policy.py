"""The Policy protocol every method trains, and its epsilon-prediction diffusion implementation.

A policy samples a `Trajectory`: the chain of latents x_T .. x_0 a sampler visits, and, for a
stochastic sampler, the Gaussian transition p(x_prev | x_t) = N(mean, std^2 I) of every step and
the log-probability of the step actually taken. Policy-gradient methods (DDPO) re-evaluate those
log-probabilities under updated parameters; direct-gradient methods sample with `grad=True`;
reward-weighted and ranking methods train with the family's own loss.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from models.diffusion import NoiseSchedule, add_noise, alpha_bar_at, ddim_transition, gaussian_log_prob
from models.text import PromptEncoder


@dataclass
class Trajectory:
    """One batch of sampling chains. B = batch, S = sampler steps, (C, H, W) = image shape."""

    prompts: list[str]
    timesteps: torch.Tensor  # (S,) int64, the timestep each step starts from, descending
    latents: torch.Tensor  # (B, S + 1, C, H, W): x_T, ..., x_0 (model space, [-1, 1] for data)
    means: torch.Tensor  # (B, S, C, H, W): mean of each step's Gaussian transition
    stds: torch.Tensor  # (S,): std of each step's transition (0 for a deterministic sampler)
    log_probs: torch.Tensor | None  # (B, S): log p(x_prev | x_t) of the step taken; None if deterministic
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    eta: float

    def subset(self, index: torch.Tensor) -> "Trajectory":
        """The chains of the samples at `index` (B',), same steps."""
        return replace(
            self,
            prompts=[self.prompts[i] for i in index.tolist()],
            latents=self.latents[index],
            means=self.means[index],
            log_probs=None if self.log_probs is None else self.log_probs[index],
            images=self.images[index],
        )


class Policy(Protocol):
    """What a method may do with a generator. Implemented once per model family."""

    family: str
    image_shape: tuple[int, int, int]

    def sample(self, prompts: list[str], steps: int, generator: torch.Generator, *, eta: float = 0.0,
               grad: bool = False) -> Trajectory: ...

    def log_prob(self, trajectory: Trajectory, step: int) -> torch.Tensor: ...

    def step_mean(self, trajectory: Trajectory, step: int) -> torch.Tensor: ...

    def loss(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def frozen_copy(self) -> "Policy": ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def images_to_model_space(images: torch.Tensor) -> torch.Tensor:
    return images * 2 - 1


def model_space_to_images(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class DiffusionPolicy:
    """An epsilon-prediction diffusion model sampled with DDIM (eta = 0: ODE, eta > 0: stochastic)."""

    family = "epsilon"

    def __init__(self, denoiser: nn.Module, encoder: PromptEncoder, schedule: NoiseSchedule | None = None):
        self.denoiser = denoiser
        self.encoder = encoder
        self.schedule = schedule or NoiseSchedule()
        self.alphas_cumprod = self.schedule.alphas_cumprod()
        self.image_shape = tuple(denoiser.image_shape)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def _text(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder(prompts).to(self.device)

    def _transition(self, x_t: torch.Tensor, t: int, steps: int, text: torch.Tensor, eta: float):
        eps = self.denoiser(x_t, torch.full((x_t.shape[0],), t, device=x_t.device), text)
        a_t = alpha_bar_at(self.alphas_cumprod, t)
        a_prev = alpha_bar_at(self.alphas_cumprod, self.schedule.previous_timestep(t, steps))
        return ddim_transition(x_t, eps, a_t, a_prev, eta)

    def sample(self, prompts: list[str], steps: int, generator: torch.Generator, *, eta: float = 0.0,
               grad: bool = False) -> Trajectory:
        """Runs the sampler. With grad=True the final images are differentiable w.r.t. the parameters."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        timesteps = self.schedule.sampling_timesteps(steps)
        text = self._text(prompts)
        x = torch.randn((len(prompts), *self.image_shape), generator=generator).to(self.device)
        latents, means, stds, log_probs = [x], [], [], []
        with torch.set_grad_enabled(grad):
            for t in timesteps.tolist():
                mean, std = self._transition(x, t, steps, text, eta)
                if std > 0:
                    noise = torch.randn(x.shape, generator=generator).to(self.device)
                    x = mean + std * noise
                    log_probs.append(gaussian_log_prob(x.detach(), mean.detach(), std))
                else:
                    x = mean
                latents.append(x)
                means.append(mean)
                stds.append(std)
        return Trajectory(
            prompts=list(prompts),
            timesteps=timesteps,
            latents=torch.stack([z.detach() for z in latents], dim=1),
            means=torch.stack([m.detach() for m in means], dim=1),
            stds=torch.tensor(stds, dtype=torch.float32),
            log_probs=torch.stack(log_probs, dim=1) if eta > 0 else None,
            images=model_space_to_images(x),
            eta=eta,
        )

    def step_mean(self, trajectory: Trajectory, step: int) -> torch.Tensor:
        """Mean of the transition at `step` under the current parameters: (B, C, H, W), differentiable."""
        steps = len(trajectory.timesteps)
        mean, _ = self._transition(trajectory.latents[:, step].to(self.device), int(trajectory.timesteps[step]),
                                   steps, self._text(trajectory.prompts), trajectory.eta)
        return mean

    def log_prob(self, trajectory: Trajectory, step: int) -> torch.Tensor:
        """log p_theta(x_{step+1} | x_step) of the recorded step under the current parameters: (B,)."""
        if trajectory.log_probs is None:
            raise ValueError("log_prob needs a stochastic trajectory (sample with eta > 0)")
        mean = self.step_mean(trajectory, step)
        return gaussian_log_prob(trajectory.latents[:, step + 1].to(self.device), mean, float(trajectory.stds[step]))

    def loss(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """The denoising loss E_t,eps ||eps - eps_theta(x_t, t)||^2 on images in [0, 1]: a scalar."""
        x0 = images_to_model_space(images.to(self.device))
        t = torch.randint(0, self.schedule.num_train_timesteps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        x_t = add_noise(x0, noise, self.alphas_cumprod[t].to(self.device))
        eps = self.denoiser(x_t, t.to(self.device), self._text(prompts))
        return ((eps - noise) ** 2).mean()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def frozen_copy(self) -> "DiffusionPolicy":
        """A frozen reference policy (e.g. for a KL penalty), sharing the prompt cache."""
        denoiser = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
        return DiffusionPolicy(denoiser, self.encoder, self.schedule)

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.denoiser.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.denoiser.load_state_dict(state)
