"""Scores as Actions' own math: the Girsanov path KL, the calibrated Tweedie value and its increments, time grids."""

import pytest
import torch
from torch import nn

from methods.sas import calibrated_values, value_increments
from methods.toolkit.policy_gradient import RatioClip, ppo_chain_backward
from models.diffusion import NoiseSchedule
from models.policy import DiffusionPolicy
from models.sampler import Sampler


class ShiftedScore(nn.Module):
    """The wrapped network with its score moved by a constant: score = -eps / sqrt(1 - alpha_bar_t), so the noise
    prediction moves by -shift * sqrt(1 - alpha_bar_t)."""

    def __init__(self, network: nn.Module, shift: float):
        super().__init__()
        self.network, self.shift, self.image_shape = network, shift, network.image_shape
        self.alphas_cumprod = NoiseSchedule().alphas_cumprod()

    def forward(self, x, t, text):
        return self.network(x, t, text) - self.shift * (1 - self.alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1)


def policies(world, shift):
    policy = world.make_policy("diffusion")
    return policy, DiffusionPolicy(ShiftedScore(policy.network, shift), policy.encoder)


def path_kl(policy, reference, chain) -> float:
    """The path KL as the sas trainer adds it up: the toolkit's per-step KLs (batch means) summed over the grid."""
    stats = ppo_chain_backward(
        policy,
        reference,
        chain,
        chain.stochastic_steps,
        torch.zeros(len(chain.images)),
        trust_region=RatioClip(0.2),
        kl_coef=1.0,
        average=False,
        chunk=3,
    )
    return sum(stats["kl"])


def test_path_kl_of_a_policy_with_itself_is_zero(tiny_world):
    policy, _ = policies(tiny_world, 0.0)
    with torch.no_grad():
        chain = policy.sample(["a handwritten three"] * 4, 10, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    assert path_kl(policy, policy, chain) == 0.0


def test_path_kl_is_quadratic_in_the_score_gap_and_a_riemann_sum_that_converges(tiny_world):
    policy, _ = policies(tiny_world, 0.0)
    prompts = ["a handwritten three"] * 2

    def kl(shift, steps):
        reference = policies(tiny_world, shift)[1]
        with torch.no_grad():
            chain = policy.sample(prompts, steps, torch.Generator().manual_seed(0), Sampler(noise=1.0))
        return path_kl(policy, reference, chain)

    # the mean gap is linear in the shift along the same chain, so the KL is exactly quadratic
    assert kl(0.2, 20) == pytest.approx(4 * kl(0.1, 20), rel=1e-3)
    # a constant score gap gives every state the same step KL: a deterministic sum over the grid, converging to
    # Girsanov's integral, int (g^2 / 2) gap^2 dt = gap^2 / 2 * sum_t beta_t, as the grid refines
    alphas = NoiseSchedule().alphas_cumprod()
    integral = 0.5 * 0.1**2 * float((1 - alphas / torch.cat([torch.ones(1, dtype=alphas.dtype), alphas[:-1]])).sum())
    errors = [abs(kl(0.1, n) - integral) / integral for n in (20, 100, 250)]
    assert errors[2] < 0.05 and errors[0] > errors[1] > errors[2]


def test_value_increments_telescope_to_the_return_less_the_first_value():
    values = torch.tensor([[0.5, -1.0, 2.0, 3.0], [1.0, 1.5, 0.0, -2.0]])
    increments = value_increments(values, scale=1.0, clip=100.0)
    torch.testing.assert_close(increments.sum(dim=1), values[:, -1] - values[:, 0])
    assert value_increments(values, scale=0.5, clip=1.0).abs().max() == 1.0


def test_calibrated_values_trust_a_prediction_as_far_as_it_predicts_the_outcome():
    terminal = torch.tensor([1.0, 2.0, 3.0, 6.0])
    exact = calibrated_values(terminal[:, None].repeat(1, 2), terminal)
    torch.testing.assert_close(exact, terminal[:, None].repeat(1, 3))  # a perfect prediction is the value
    uninformative = calibrated_values(torch.full((4, 1), -30.0), terminal)
    torch.testing.assert_close(uninformative[:, 0], torch.full((4,), 3.0))  # no spread: the mean outcome
    scaled = calibrated_values(10 * terminal[:, None], terminal)  # 10x too spread: slope 0.1, the exact line
    torch.testing.assert_close(scaled[:, 0], terminal)
    # every step's values average to the mean outcome, so the increments have batch mean 0 (no time bias)
    mixed = calibrated_values(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), terminal)
    torch.testing.assert_close(mixed.mean(dim=0), torch.full((6,), 3.0))


def test_jittered_grid_draws_one_timestep_in_each_stratum():
    schedule = NoiseSchedule()
    for seed in range(5):
        grid = schedule.jittered_timesteps(20, torch.Generator().manual_seed(seed))
        strata = torch.arange(19, -1, -1) * 50
        assert grid.dtype == torch.int64 and (grid >= strata + 1).all() and (grid < strata + 50).all()
    assert not torch.equal(
        schedule.jittered_timesteps(20, torch.Generator().manual_seed(0)),
        schedule.jittered_timesteps(20, torch.Generator().manual_seed(1)),
    )


def test_sampling_on_an_explicit_grid_is_sampling_with_its_step_count(tiny_world):
    policy = tiny_world.make_policy("diffusion")
    prompts = ["a handwritten eight"] * 2
    by_count = policy.sample(prompts, 5, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    by_grid = policy.sample(
        prompts, policy.schedule.sampling_timesteps(5), torch.Generator().manual_seed(0), Sampler(noise=1.0)
    )
    assert torch.equal(by_count.images, by_grid.images) and torch.equal(by_count.log_probs, by_grid.log_probs)


def test_the_last_prediction_of_a_deterministic_chain_is_its_image(tiny_world):
    for model in ("diffusion", "consistency", "flow"):
        policy = tiny_world.make_policy(model)
        chain = policy.sample(["a handwritten one"] * 2, 4, torch.Generator().manual_seed(0))
        assert chain.predictions.shape == chain.means.shape
        if model != "diffusion":  # DDIM's last step lands on alpha_bar_0, a hair away from its prediction
            torch.testing.assert_close(chain.predictions[:, -1], chain.latents[:, -1])


@pytest.mark.parametrize("grid", ["stratified", "fixed"])
def test_training_grid_follows_the_config(tiny_world, grid):
    import dataclasses

    from bench.meter import Meter
    from bench.trainers import build_trainer
    from methods.sas import Config
    from worlds import REWARDS

    trainer = build_trainer(
        "sas",
        tiny_world.make_policy("diffusion"),
        REWARDS["digit"].from_world(tiny_world),
        tiny_world.prompts["train"],
        dataclasses.replace(Config(), sample_steps=4, grid=grid),
        0,
        Meter(),
    )
    grids = [trainer.training_grid() for _ in range(2)]
    assert (grids == [4, 4]) if grid == "fixed" else not torch.equal(*grids)
