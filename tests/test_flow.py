"""The rectified-flow model's samplers: Euler against diffusers, and the stochastic sampler's marginals
against a closed form (Gaussian data, whose exact velocity field is known)."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from models.flow import TIMESTEP_SCALE, FlowPolicy, cps_transition, flow_transition, sde_transition, velocity_from_data
from models.sampler import Sampler


class ConstantText(nn.Module):
    def forward(self, prompts):
        return torch.zeros(len(prompts), 1)


class GaussianVelocity(nn.Module):
    """The exact velocity E[eps - x0 | x_t] when every pixel of x0 is N(mu, c^2) independently."""

    image_shape = (1, 4, 4)

    def __init__(self, mu: float, c: float):
        super().__init__()
        self.mu, self.c = mu, c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, text):
        t = (t.double() / TIMESTEP_SCALE).view(-1, 1, 1, 1)
        variance = (1 - t) ** 2 * self.c**2 + t**2
        centred = x.double() - (1 - t) * self.mu
        x0 = self.mu + (1 - t) * self.c**2 / variance * centred
        eps = t / variance * centred
        return (eps - x0).float()


def test_the_deterministic_step_is_diffusers_euler_step():
    steps, g = 4, torch.Generator().manual_seed(0)
    policy = FlowPolicy(GaussianVelocity(0.3, 0.5), ConstantText())
    timesteps = policy.sampling_timesteps(steps)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=timesteps.tolist())
    for step in range(steps):
        x = torch.randn(2, 1, 4, 4, generator=g)
        mean, std, _ = policy.transition(x, step, timesteps, torch.zeros(2, 1), 0.0, "ddim")
        v = policy.network(x, torch.full((2,), float(timesteps[step]) * TIMESTEP_SCALE), None)
        expected = scheduler.step(v, scheduler.timesteps[step], x).prev_sample
        assert std == 0 and torch.allclose(mean, expected, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_every_sampler_lands_on_the_data_distribution(eta):
    mu, c = 0.3, 0.5
    policy = FlowPolicy(GaussianVelocity(mu, c), ConstantText())
    with torch.no_grad():
        chain = policy.sample(["x"] * 2000, 200, torch.Generator().manual_seed(1), Sampler(noise=eta))
    x = chain.latents[:, -1].flatten()
    assert abs(x.mean().item() - mu) < 0.01 and abs(x.std().item() - c) < 0.01


def test_the_posterior_std_keeps_the_path_marginals():
    # one step from t to s with the true x0 and eps: (1 - s) x0 + sqrt(s^2 - std^2) eps + std z has noise std s
    for t, s in [(1.0, 0.6), (0.8, 0.3), (0.5, 0.1)]:
        x0, eps = torch.zeros(1), torch.ones(1)
        x_t = (1 - t) * x0 + t * eps
        mean, std = flow_transition(x_t, eps - x0, t, s, eta=1.0)
        assert math.isclose(((mean - (1 - s) * x0) / eps).item() ** 2 + std**2, s**2, rel_tol=1e-6)  # float32
        # eta = 1 is the posterior of x_s given x_t and x0: its std for this path, in closed form
        assert math.isclose(std**2, s**2 * (t**2 - ((1 - t) * s / (1 - s)) ** 2) / t**2, rel_tol=1e-9)
    assert flow_transition(torch.zeros(1), torch.zeros(1), 0.5, 0.0, eta=1.0)[1] == 0  # the last step


def test_every_stochastic_step_but_the_last_is_an_action(tiny_world):
    policy = tiny_world.make_policy("flow")
    chain = policy.sample(
        ["a handwritten seven", "the digit 3"], 4, torch.Generator().manual_seed(0), Sampler(noise=1.0)
    )
    assert chain.stochastic_steps == [0, 1, 2] and float(chain.stds[-1]) == 0
    with torch.no_grad():
        for s in chain.stochastic_steps:
            assert torch.allclose(policy.log_prob(chain, s), chain.log_probs[:, s], rtol=1e-6, atol=1e-3)
    assert policy.sample(["x"], 4, torch.Generator().manual_seed(0)).log_probs is None  # Euler: deterministic


@pytest.mark.parametrize("dynamics, level", [("flow-sde", 0.7), ("dance-sde", 0.3)])
def test_the_grpo_sde_step_is_the_papers_euler_maruyama_step(dynamics, level):
    policy = FlowPolicy(GaussianVelocity(0.3, 0.5), ConstantText())
    timesteps, g = policy.sampling_timesteps(5), torch.Generator().manual_seed(0)
    for step in range(4):  # the last step, to t = 0, is the deterministic Euler step
        t, s = float(timesteps[step]), float(timesteps[step + 1])
        x = torch.randn(2, 1, 4, 4, generator=g)
        v = policy.network(x, torch.full((2,), t * TIMESTEP_SCALE), None)
        # Flow-GRPO eq. 9 (dt = s - t): x_{t+dt} = x_t + [v + sigma^2/(2t) (x_t + (1 - t) v)] dt + sigma sqrt(-dt) eps
        u = t if t < 1 else s
        sigma = level * math.sqrt(u / (1 - u)) if dynamics == "flow-sde" else level
        expected_mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * (s - t)
        mean, std, _ = policy.transition(x, step, timesteps, torch.zeros(2, 1), level, dynamics)
        assert torch.allclose(mean, expected_mean, atol=1e-6) and math.isclose(std, sigma * math.sqrt(t - s))
    mean, std, _ = policy.transition(x, 4, timesteps, torch.zeros(2, 1), level, dynamics)
    assert std == 0


@pytest.mark.parametrize(
    "dynamics, level", [("flow-sde", 0.3), ("flow-sde", 0.7), ("flow-sde", 1.0), ("dance-sde", 0.5)]
)
def test_the_grpo_sdes_land_on_the_data_distribution(dynamics, level):
    mu, c = 0.3, 0.5
    policy = FlowPolicy(GaussianVelocity(mu, c), ConstantText())
    with torch.no_grad():
        chain = policy.sample(["x"] * 2000, 200, torch.Generator().manual_seed(1), Sampler(dynamics, level))
    x = chain.latents[:, -1].flatten()
    assert abs(x.mean().item() - mu) < 0.01 and abs(x.std().item() - c) < 0.01
    assert chain.stochastic_steps == list(range(199))


@pytest.mark.parametrize("eta", [0.3, 0.8, 1.0])
def test_cps_keeps_the_paths_coefficients_on_data_and_noise(eta):
    # with the true velocity, x_t = (1 - t) x0 + t eps gives x_s = (1 - s) x0 + s cos(eta pi/2) eps + s sin(eta pi/2) z:
    # on the data the path's coefficient 1 - s, on the noise (old and fresh together) the path's s, exactly
    for t, s in [(1.0, 0.75), (0.8, 0.3), (0.5, 0.1)]:
        x0, eps = torch.tensor([0.4]), torch.tensor([1.0])
        mean, std = cps_transition((1 - t) * x0 + t * eps, eps - x0, t, s, eta)
        old_noise = ((mean - (1 - s) * x0) / eps).item()
        assert math.isclose(old_noise, s * math.cos(eta * math.pi / 2), rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(old_noise**2 + std**2, s**2, rel_tol=1e-5) and math.isclose(
            std, s * math.sin(eta * math.pi / 2)
        )
    # the Flow-SDE's Euler-Maruyama step at the same point does not keep them: its noise exceeds the path's s
    x_t, v = 0.6 * torch.tensor([0.4]) + 0.4 * torch.tensor([1.0]), torch.tensor([0.6])
    mean, std = sde_transition(x_t, v, 0.4, 0.3, 0.7 * math.sqrt(0.4 / 0.6))
    assert ((mean - 0.7 * 0.4) / 1.0).item() ** 2 + std**2 > 0.3**2 * 1.01


def test_cps_is_the_papers_step_and_euler_at_noise_0():
    policy = FlowPolicy(GaussianVelocity(0.3, 0.5), ConstantText())
    timesteps, g = policy.sampling_timesteps(5), torch.Generator().manual_seed(0)
    for step in range(4):
        t, s = float(timesteps[step]), float(timesteps[step + 1])
        x = torch.randn(2, 1, 4, 4, generator=g)
        v = policy.network(x, torch.full((2,), t * TIMESTEP_SCALE), None)
        # FlowCPS: std = sigma_prev sin(eta pi/2), mean = x0_hat (1 - sigma_prev) + eps_hat sqrt(sigma_prev^2 - std^2)
        std_expected = s * math.sin(0.8 * math.pi / 2)
        expected = (x - t * v) * (1 - s) + (x + (1 - t) * v) * math.sqrt(s**2 - std_expected**2)
        mean, std, _ = policy.transition(x, step, timesteps, torch.zeros(2, 1), 0.8, "cps")
        assert torch.allclose(mean, expected, atol=1e-6) and math.isclose(std, std_expected)
        euler, zero, _ = policy.transition(x, step, timesteps, torch.zeros(2, 1), 0.0, "cps")
        assert torch.allclose(euler, x + (s - t) * v, atol=1e-6) and zero == 0


def test_cps_lands_on_the_data_mean_with_less_spread_the_more_it_renoises():
    # it keeps the path's coefficients, not its marginals: each step renoises the model's x0_hat, a posterior mean with
    # less spread than the data, by O(1) rather than the O(sqrt(dt)) of a marginal-preserving SDE, so at 100 steps the
    # spread of the Gaussian data (0.5) is kept at eta = 0 (Euler) and shrinks as eta grows
    mu, c = 0.3, 0.5
    policy = FlowPolicy(GaussianVelocity(mu, c), ConstantText())
    spreads = []
    for eta in (0.0, 0.5, 1.0):
        with torch.no_grad():
            chain = policy.sample(["x"] * 2000, 100, torch.Generator().manual_seed(1), Sampler("cps", eta))
        x = chain.latents[:, -1].flatten()
        assert abs(x.mean().item() - mu) < 0.01
        spreads.append(x.std().item())
    assert abs(spreads[0] - c) < 0.01 and spreads[0] > spreads[1] + 0.02 > spreads[2] + 0.04


def test_a_chain_can_be_noised_on_chosen_steps_only_and_start_from_given_noise():
    policy = FlowPolicy(GaussianVelocity(0.3, 0.5), ConstantText())
    initial = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3)).expand(3, -1, -1, -1)
    window = Sampler("flow-sde", 0.7, window=(2, 4))
    chain = policy.sample(["x"] * 3, 6, torch.Generator().manual_seed(0), window, initial=initial)
    assert chain.stochastic_steps == [2, 3] and chain.noise == (0, 0, 0.7, 0.7, 0, 0)
    assert torch.equal(chain.latents[:, 0], initial) and torch.equal(chain.latents[0, 2], chain.latents[2, 2])  # ODE
    assert not torch.equal(chain.latents[0, 3], chain.latents[2, 3])  # a window step noises each chain on its own
    with pytest.raises(ValueError, match=r"a sampler's window \(2, 8\) reaches past the chain's 6 steps"):
        policy.sample(["x"], 6, torch.Generator(), Sampler("flow-sde", 0.7, window=(2, 8)))
    with pytest.raises(
        ValueError, match="a flow model has no sampler dynamics 'consistency'; valid: ddim, flow-sde, dance-sde, cps"
    ):
        policy.sample(["x"], 6, torch.Generator(), Sampler("consistency"))
    with pytest.raises(
        ValueError, match="unknown sampler dynamics 'ode'; valid: ddim, consistency, flow-sde, dance-sde, cps"
    ):
        Sampler("ode")
    with pytest.raises(ValueError, match=r"coefficients-preserving sampling's noise level is in \[0, 1\], got 1.5"):
        Sampler("cps", 1.5)
    with pytest.raises(ValueError, match="noise level must be a finite number >= 0, got -0.5"):
        Sampler(noise=-0.5)


def test_a_data_prediction_gives_the_velocity_of_its_path_and_is_held_near_the_data():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    t = torch.tensor([0.9, 0.3, 0.02])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v = velocity_from_data(x_t, t * TIMESTEP_SCALE, x0, floor=0.05)
    # the exact clean image gives the path's velocity eps - x0, except below the floor, where t is held at 0.05
    assert torch.allclose(v[:2], (eps - x0)[:2], atol=1e-5)
    assert torch.allclose(v[2], (eps - x0)[2] * 0.02 / 0.05, atol=1e-5)
