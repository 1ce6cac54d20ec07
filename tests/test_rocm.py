"""ROCM's own math: plain reward backpropagation at beta = 0, gradients through every step, checkpointing."""

import dataclasses

import pytest
import torch

from bench.meter import Meter
from bench.trainers import build_trainer
from methods import METHODS
from methods.rocm import Config, regularized_loss
from methods.trainer import prompt_groups
from models.sampler import Sampler
from worlds import REWARDS

SMALL = {"prompts_per_iter": 2, "samples_per_prompt": 3, "sample_steps": 3, "max_grad_norm": 1e30}  # no clipping


def make(world, **overrides):
    meter = Meter()
    config = dataclasses.replace(Config(), **{**SMALL, **overrides})
    policy, reward = world.make_policy("consistency"), REWARDS["digit"].from_world(world)
    trainer = build_trainer("rocm", policy, reward, world.prompts["train"], config, 0, meter)
    return trainer, meter


def gradients(trainer):
    return [p.grad.clone() for p in trainer.policy.trainable_parameters()]


def test_beta_zero_is_plain_reward_backpropagation(tiny_world):
    trainer, _ = make(tiny_world, beta=0.0)
    trainer.step()
    # the same chains by hand: -mean reward of images sampled with the reparameterization trick
    policy, reward = tiny_world.make_policy("consistency"), REWARDS["digit"].from_world(tiny_world)
    generator = torch.Generator().manual_seed(0)
    prompts = prompt_groups(tiny_world.prompts["train"], 2, 3, generator)
    images = policy.sample(prompts, 3, generator, Sampler(noise=1.0), grad=True).images
    (-reward(images, prompts).mean()).backward()
    for ours, expected in zip(gradients(trainer), (p.grad for p in policy.trainable_parameters())):
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-7)
    unregularized, _ = make(tiny_world, divergence="none")
    unregularized.step()
    assert all(torch.equal(a, b) for a, b in zip(gradients(trainer), gradients(unregularized)))


@pytest.mark.parametrize("divergence", ["none", "kl", "js"])
def test_the_objective_reaches_the_network_through_every_step(tiny_world, divergence):
    trainer, _ = make(tiny_world, divergence=divergence, beta=0.5)
    outputs = []
    hook = trainer.policy.network.register_forward_hook(lambda _m, _a, out: outputs.append(out) or out.retain_grad())
    trainer.step()
    hook.remove()
    steps = outputs[:3]  # the policy's three sampling steps come first
    assert len(steps) == 3 and all(out.grad is not None and out.grad.abs().sum() > 0 for out in steps)


def test_divergence_is_zero_on_the_first_step_and_the_penalty_adds_to_the_loss(tiny_world):
    trainer, _ = make(tiny_world, divergence="kl", beta=1.0)
    stats = trainer.step()  # the policy still equals its reference
    assert stats["divergence"] == 0 and stats["loss"] == -stats["reward"]
    second = trainer.step()
    assert second["divergence"] > 0
    rewards = torch.tensor([1.0, 3.0])
    divergences = [torch.tensor([0.5, 1.5]), torch.tensor([1.0, 1.0])]
    assert regularized_loss(rewards, divergences, beta=0.1).item() == pytest.approx(-2.0 + 0.1 * 2.0)


def test_gradient_checkpointing_gives_the_same_gradients_for_one_more_forward_per_step(tiny_world):
    plain, plain_meter = make(tiny_world)
    checkpointed, checkpointed_meter = make(tiny_world, gradient_checkpointing=True)
    plain.step()
    checkpointed.step()
    for a, b in zip(gradients(plain), gradients(checkpointed)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert checkpointed_meter.accounts["train"].nfe - plain_meter.accounts["train"].nfe == 6 * 3


def test_a_non_differentiable_reward_and_bad_options_are_refused():
    assert METHODS["rocm"].incompatibility(REWARDS["compress"], "nfe") == "needs a differentiable reward"
    with pytest.raises(ValueError, match="rocm.divergence must be one of none, kl, reverse_kl"):
        Config(divergence="kld")
    with pytest.raises(ValueError, match="rocm.eta must be > 0 with a divergence"):
        Config(eta=0.0)
    Config(eta=0.0, divergence="none")
