"""The DDIM transition and its log-probabilities against independent oracles."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from models.diffusion import NoiseSchedule, alpha_bar_at, ddim_transition, epsilon_from_data, gaussian_log_prob
from models.policy import DiffusionPolicy
from models.sampler import Sampler


def sd_like_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_timesteps_match_diffusers(steps):
    scheduler = sd_like_scheduler()
    scheduler.set_timesteps(steps)
    assert NoiseSchedule().sampling_timesteps(steps).tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(eta):
    steps = 10
    schedule, scheduler = NoiseSchedule(), sd_like_scheduler()
    scheduler.set_timesteps(steps)
    alphas = schedule.alphas_cumprod()
    assert torch.allclose(alphas.float(), scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    timesteps = schedule.sampling_timesteps(steps).tolist()
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
        eps = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
        noise = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
        mean, std = ddim_transition(x, eps, alpha_bar_at(alphas, t), alpha_bar_at(alphas, t_prev), eta)
        expected = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        # diffusers keeps alpha_bar in float32, this schedule in float64: agreement to float32 precision
        assert torch.allclose(mean + std * noise, expected, atol=1e-5, rtol=0), t
        assert (std > 0) == (eta > 0)


def test_gaussian_log_prob_is_the_closed_form_density():
    gen = torch.Generator().manual_seed(1)
    x, mean = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen)
    expected = torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_log_prob(x, mean, 0.3), expected, atol=1e-4)
    # by hand at the mean: -D (log sigma + log(2 pi) / 2)
    at_mean = gaussian_log_prob(mean, mean, 0.3)
    assert torch.allclose(at_mean, torch.full((4,), -64 * (math.log(0.3) + 0.5 * math.log(2 * math.pi))))


def test_trajectory_log_probs_are_the_density_of_the_steps_taken(tiny_world):
    policy = tiny_world.make_policy("diffusion")
    traj = policy.sample(
        ["a handwritten seven", "the digit 3"], 5, torch.Generator().manual_seed(0), Sampler(noise=1.0)
    )
    assert traj.latents.shape == (2, 6, 1, 8, 8) and traj.log_probs.shape == (2, 5)
    assert traj.images.min() >= 0 and traj.images.max() <= 1
    for s in range(5):
        manual = torch.distributions.Normal(traj.means[:, s], float(traj.stds[s])).log_prob(traj.latents[:, s + 1])
        assert torch.allclose(traj.log_probs[:, s], manual.flatten(1).sum(1), rtol=1e-5, atol=1e-3)
        # re-evaluated under the same parameters: the same density
        with torch.no_grad():
            assert torch.allclose(policy.log_prob(traj, s), traj.log_probs[:, s], rtol=1e-6, atol=1e-4)


def test_deterministic_sampler_has_no_log_probs_and_grad_mode_reaches_parameters(tiny_world):
    policy = tiny_world.make_policy("diffusion")
    traj = policy.sample(["a handwritten two"], 3, torch.Generator().manual_seed(0), grad=True)
    assert traj.log_probs is None and float(traj.stds.abs().sum()) == 0
    traj.images.sum().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())


class _DataPredictor(torch.nn.Module):
    """Predicts the clean image (in model space) as a fixed image, whatever x_t; its noise follows from
    epsilon_from_data."""

    def __init__(self, guess: torch.Tensor, floor: float):
        super().__init__()
        self.guess, self.image_shape = torch.nn.Parameter(guess), tuple(guess.shape)
        self.to_epsilon = epsilon_from_data(NoiseSchedule().alphas_cumprod(), floor)

    def forward(self, x, t, text):
        return self.to_epsilon(x, t, self.guess.expand_as(x))


def test_a_data_prediction_gives_its_noise_and_the_velocity_loss_weighs_its_error_by_one_over_one_minus_alpha_bar():
    alphas = NoiseSchedule().alphas_cumprod()
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 4, 4, generator=generator), torch.randn(3, 1, 4, 4, generator=generator)
    t = torch.tensor([900, 300, 2])
    a = alphas[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    predicted = epsilon_from_data(alphas, floor=0.05)(x_t, t, x0)
    assert torch.allclose(predicted[:2], eps[:2], atol=1e-4)  # the exact clean image gives the exact noise
    assert torch.allclose(predicted[2], eps[2] * (1 - a[2]).sqrt() / 0.05, atol=1e-4)  # held below the floor

    images = torch.rand(6, 1, 4, 4, generator=generator)
    guess = torch.rand(1, 4, 4, generator=generator)
    policy = DiffusionPolicy(_DataPredictor(guess, floor=0.0), lambda prompts: torch.zeros(len(prompts), 1))
    loss = policy.velocity_loss(images, ["a"] * 6, torch.Generator().manual_seed(1))
    draws = torch.Generator().manual_seed(1)  # the loss's own draws: its timesteps, then its noise
    t = torch.randint(0, 1000, (6,), generator=draws)
    x0_error = (guess - (images * 2 - 1)).pow(2).flatten(1).mean(dim=1)  # in model space
    assert torch.allclose(loss, (x0_error / (1 - alphas[t].float())).mean(), rtol=1e-4)
