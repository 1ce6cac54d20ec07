"""TempFlow-GRPO (methods/tempflow_grpo.py): the noise-aware weights against the stds the sampler draws with, and a
branched iteration: one seed per group, the shared prefix run once per group, the one stochastic step, its weight and
the work metered for it. Its contract (finite steps, determinism, resume, exact metering at the small config's one
branching step) is tests/test_methods.py's."""

import pytest
import torch
from test_methods import make

from methods.tempflow_grpo import noise_weights
from methods.toolkit.policy_gradient import ppo_usage
from models.sampler import Sampler


@pytest.mark.parametrize("dynamics, level", [("flow-sde", 0.7), ("cps", 0.8)])
def test_noise_weights_are_the_sampled_steps_stds_over_their_mean(tiny_world, dynamics, level):
    policy = tiny_world.make_policy("flow")
    grid = policy.sampling_timesteps(6)
    chain = policy.sample(["0"] * 2, grid, torch.Generator().manual_seed(0), Sampler(dynamics, level))
    stds = chain.stds[chain.stochastic_steps].double()
    weights = noise_weights(grid, dynamics, level)
    assert len(weights) == len(stds) == 5
    assert torch.allclose(weights, stds / stds.mean(), rtol=1e-6)
    assert abs(float(weights.mean()) - 1) < 1e-12


def test_the_flow_sde_weighs_early_noisy_steps_most():
    weights = noise_weights(1 - torch.arange(10, dtype=torch.float64) / 10, "flow-sde", 0.7)
    # the first two are equal: at t = 1, where sigma_t is infinite, the SDE takes it at the next time
    assert torch.all(weights[:-1] >= weights[1:]) and weights[0] > 5 * weights[-1]


def test_a_group_shares_its_seed_and_prefix_and_differs_by_the_branching_step_alone(tiny_world):
    steps, per_group, groups = 4, 3, 2
    trainer, meter = make(tiny_world, "tempflow_grpo", "flow", sample_steps=steps)
    captured = {}
    sample_scored = trainer.sample_scored

    def spy(prompts, grid, sampler, initial=None):
        trajectory, rewards = sample_scored(prompts, grid, sampler, initial)
        captured.update(grid=grid, initial=initial, trajectory=trajectory)
        return trajectory, rewards

    trainer.sample_scored = spy
    branches = set()
    for _ in range(6):  # the branching steps drawn by this seed include a later one
        before = meter.accounts["train"].nfe
        stats = trainer.step()
        branch = int(stats["branch_step"])
        branches.add(branch)
        trajectory, initial = captured["trajectory"], captured["initial"].view(groups, per_group, -1)
        assert len(captured["grid"]) == steps - branch and trajectory.stochastic_steps == [0]
        assert torch.equal(initial, initial[:, :1].expand_as(initial)) and not torch.equal(initial[0], initial[1])
        finals = trajectory.latents[:, -1].view(groups, per_group, -1)
        assert not torch.equal(finals[:, 0], finals[:, 1])
        grid = trainer.policy.sampling_timesteps(steps)
        assert stats["step_weight"] == pytest.approx(float(noise_weights(grid, "flow-sde", 0.7)[branch]))
        config, images = trainer.config, groups * per_group
        work = ppo_usage(config, images, steps - branch, 1)["nfe"] + groups * branch
        assert meter.accounts["train"].nfe - before == work
    assert branches - {0}


def test_without_noise_weighting_the_weight_is_one(tiny_world):
    trainer, _ = make(tiny_world, "tempflow_grpo", "flow", sample_steps=4, noise_weighting=False)
    assert trainer.step()["step_weight"] == 1.0
