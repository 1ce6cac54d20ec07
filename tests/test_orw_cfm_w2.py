"""ORW-CFM-W2's own math: its weights, its loss against plain flow matching and the W2 bound, and on a 2-D
toy with a linear reward, a tilt of the sample mean towards the reward that the W2 bound holds back."""

import torch
from torch import nn

from methods.orw_cfm_w2 import ORWCFMW2, Config, orw_loss
from methods.toolkit.weightings import reward_weights
from models.flow import TIMESTEP_SCALE, FlowPolicy
from worlds import REWARDS


def test_reward_weights_known_values():
    rewards = torch.tensor([0.0, 1.0, 2.0])
    z = torch.tensor([-1.0, 0.0, 1.0]) * 1.5**0.5  # standardized: the population std of 0, 1, 2 is sqrt(2/3)
    assert torch.allclose(reward_weights(rewards, "exp", 2.0), torch.softmax(z / 2.0, dim=0))
    assert torch.allclose(reward_weights(rewards * 100 - 7, "exp", 2.0), reward_weights(rewards, "exp", 2.0))
    assert torch.allclose(reward_weights(rewards, "linear", 1.0), torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.allclose(reward_weights(torch.tensor([5.0, -1.0, 2.0]), "rank", 1.0), torch.tensor([3, 1, 2]) / 6)
    for weighting in ("exp", "linear", "rank", "uniform"):
        assert torch.isclose(reward_weights(torch.randn(7), weighting, 0.5).sum(), torch.tensor(1.0))
    assert torch.equal(reward_weights(torch.full((4,), 3.0), "exp", 1.0), torch.full((4,), 0.25))
    assert torch.equal(reward_weights(torch.full((4,), 3.0), "linear", 1.0), torch.full((4,), 0.25))


def test_uniform_weights_without_the_bound_are_plain_flow_matching(tiny_world):
    policy = tiny_world.make_policy("flow")
    prompts = tiny_world.prompts["train"][:6]
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = policy.loss(images, prompts, torch.Generator().manual_seed(3))
    x_t, t, target = policy.flow_matching_pair(images, torch.Generator().manual_seed(3))
    loss, gap = orw_loss(
        policy.velocity(x_t, t, prompts), target, None, reward_weights(torch.randn(6), "uniform", 1.0), alpha=0.0
    )
    assert torch.allclose(loss, plain, rtol=1e-6) and gap == 0


def test_the_w2_bound_is_zero_at_the_reference_and_grows_with_the_gap():
    prediction, target = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    weights = torch.full((4,), 0.25)
    at_reference, gap = orw_loss(prediction, target, prediction.clone(), weights, alpha=10.0)
    assert gap == 0 and torch.isclose(at_reference, ((prediction - target) ** 2).mean())
    _, shifted = orw_loss(prediction, target, prediction + 0.5, weights, alpha=10.0)
    assert torch.isclose(shifted, torch.tensor(0.25))


def test_first_step_on_the_world_model_has_a_zero_bound(tiny_world):
    trainer = ORWCFMW2(
        tiny_world.make_policy("flow"),
        REWARDS["compress"].from_world(tiny_world),
        tiny_world.prompts["train"],
        Config(prompts_per_iter=2, samples_per_prompt=3, sample_steps=3, updates_per_iter=1),
        seed=0,
    )
    assert trainer.step()["w2_bound"] == 0


class ToyVelocity(nn.Module):
    """A 2-pixel flow model: v_theta(x, t) by a small MLP, no text."""

    image_shape = (2, 1, 1)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, t, text):
        return self.net(torch.cat([x.flatten(1), t.view(-1, 1) / TIMESTEP_SCALE], dim=1)).view(x.shape)


class NoText(nn.Module):
    def forward(self, prompts):
        return torch.zeros(len(prompts), 1)


def toy_base() -> FlowPolicy:
    """A flow model of N((0, 0), 0.1^2 I) in model space, trained by flow matching."""
    torch.manual_seed(0)
    policy = FlowPolicy(ToyVelocity(), NoText())
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(600):
        images = (1 + 0.1 * torch.randn(256, 2, 1, 1, generator=generator)) / 2  # model space x = 2 * image - 1
        loss = policy.loss(images, ["toy"] * 256, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy


def mean_after(base: FlowPolicy, alpha: float, iterations: int = 25) -> torch.Tensor:
    """The sample mean (model space) after ORW-CFM-W2 with the reward x_0 - x_1 (a linear tilt along (1, -1))."""
    policy = base.frozen_copy()
    policy.network.requires_grad_(True).train()
    config = Config(prompts_per_iter=1, samples_per_prompt=64, sample_steps=10, alpha=alpha, learning_rate=3e-3)
    trainer = ORWCFMW2(policy, lambda images, prompts: images[:, 0, 0, 0] - images[:, 1, 0, 0], ["toy"], config, seed=0)
    for _ in range(iterations):
        trainer.step()
    with torch.no_grad():
        return policy.sample(["toy"] * 2000, 10, torch.Generator().manual_seed(9)).latents[:, -1].flatten(1).mean(0)


def test_a_linear_reward_tilts_the_mean_its_way_and_the_w2_bound_holds_it_back_monotonically():
    base = toy_base()
    with torch.no_grad():
        start = base.sample(["toy"] * 2000, 10, torch.Generator().manual_seed(9)).latents[:, -1].flatten(1).mean(0)
    assert start.abs().max() < 0.02  # the base learned its mean
    direction = torch.tensor([1.0, -1.0]) / 2**0.5
    free, mid, held = (float((mean_after(base, alpha) - start) @ direction) for alpha in (0.0, 1.0, 100.0))
    # the tilted optimum of N(0, 0.1^2) by exp(z / tau) moves the mean along (1, -1); unregularized, repeated
    # tilting runs on towards the reward's maximum, and a stronger bound holds the mean closer to the base's
    assert free > 0.5 and 0.02 < mid < free / 4 and abs(held) < mid / 2, (free, mid, held)
