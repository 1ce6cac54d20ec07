"""The consistency model's sampler against diffusers' LCMScheduler, and its boundary condition."""

import pytest
import torch
from diffusers import LCMScheduler
from torch import nn

from models.consistency import ConsistencyPolicy, boundary_scalings, consistency_output


def lcm_scheduler() -> LCMScheduler:
    return LCMScheduler(
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        set_alpha_to_one=False,
        clip_sample=False,
        original_inference_steps=50,
        timestep_scaling=10.0,
    )


class FixedNoisePrediction(nn.Module):
    """A stand-in network whose noise prediction is a given tensor, so both samplers see the same output."""

    image_shape = (1, 4, 4)

    def __init__(self):
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(2, 1, 4, 4))

    def forward(self, x, t, text):
        return self.eps.to(x.dtype).expand_as(x)


def policy_with(eps: torch.Tensor) -> ConsistencyPolicy:
    network = FixedNoisePrediction()
    network.eps.data.copy_(eps)
    return ConsistencyPolicy(network, lambda prompts: torch.zeros(len(prompts), 3))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
def test_sampling_timesteps_match_lcm_scheduler(steps):
    scheduler = lcm_scheduler()
    scheduler.set_timesteps(steps)
    assert policy_with(torch.zeros(2, 1, 4, 4)).sampling_timesteps(steps).tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_every_step_matches_lcm_scheduler(noise):
    steps, g = 4, torch.Generator().manual_seed(0)
    eps = torch.randn(2, 1, 4, 4, generator=g)
    policy = policy_with(eps)
    scheduler = lcm_scheduler()
    scheduler.set_timesteps(steps)
    timesteps = policy.sampling_timesteps(steps)
    for step, t in enumerate(timesteps.tolist()):
        x = torch.randn(2, 1, 4, 4, generator=g)
        mean, std, _ = policy.transition(x, step, timesteps, torch.zeros(2, 3), noise, "consistency")
        result = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(step))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        if step + 1 < steps:
            assert torch.allclose(mean + std * noise, result.prev_sample, atol=1e-5)
        else:  # the last step returns the prediction, whatever the noise level (which consistency does not read)
            assert torch.allclose(mean, result.denoised, atol=1e-5) and std == 0


def test_boundary_condition_f_of_x_at_zero_is_x():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[2] < 1e-6 and c_out[2] > 1 - 1e-6
    x, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    out = consistency_output(x, eps, torch.zeros(3, dtype=torch.int64), torch.full((3,), 0.9999, dtype=torch.float64))
    assert torch.equal(out, x)


def test_every_step_but_the_last_is_an_action_with_a_density(tiny_world):
    policy = tiny_world.make_policy("consistency")
    prompts = ["a handwritten seven", "the digit 3"]
    chain = policy.sample(prompts, 4, torch.Generator().manual_seed(0))
    assert chain.stochastic_steps == [0, 1, 2] and float(chain.stds[-1]) == 0
    assert chain.log_probs.shape == (2, 4) and torch.isnan(chain.log_probs[:, 3]).all()
    with torch.no_grad():
        for s in chain.stochastic_steps:
            assert torch.allclose(policy.log_prob(chain, s), chain.log_probs[:, s], rtol=1e-6, atol=1e-3)
    assert policy.sample(prompts, 1, torch.Generator().manual_seed(0)).log_probs is None  # one step: deterministic
