"""The meter counts what is done, whoever does it."""

import pytest
import torch

from bench.budget import Budget
from bench.meter import Meter, MeteredPolicy, MeteredReward
from worlds import REWARDS


@pytest.mark.parametrize(
    "text, unit, amount",
    [
        ("300000", "nfe", 3e5),
        ("nfe:300k", "nfe", 3e5),
        ("reward_queries:5000", "reward_queries", 5000),
        ("wall_s:1.5m", "wall_s", 1.5e6),
        ("samples:2e3", "samples", 2000),
    ],
)
def test_budget_parse(text, unit, amount):
    assert Budget.parse(text) == Budget(unit, amount)


@pytest.mark.parametrize("text", ["", "flops:10", "nfe:-3", "nfe:0", "nfe:ten", "10x", "nfe:1e400", "1e308G"])
def test_budget_parse_rejects_with_the_valid_units(text):
    with pytest.raises(ValueError, match="nfe, reward_queries, samples, wall_s"):
        Budget.parse(text)


def test_forward_counts_batch_backward_counts_twice_reference_copies_count(tiny_world):
    meter = Meter()
    policy = MeteredPolicy(tiny_world.make_policy("diffusion"), meter)
    with torch.no_grad():
        policy.sample(["a handwritten one"] * 3, 4, torch.Generator().manual_seed(0))
    assert meter.usage.nfe == 12 and meter.usage.samples == 3
    traj = policy.sample(["a handwritten one"] * 2, 4, torch.Generator().manual_seed(0), grad=True)
    assert meter.usage.nfe == 12 + 8
    traj.images.sum().backward()
    assert meter.usage.nfe == 12 + 8 + 16
    reference = policy.frozen_copy()
    with torch.no_grad():
        reference.sample(["a handwritten one"], 4, torch.Generator().manual_seed(0))
    assert meter.usage.nfe == 36 + 4 and meter.usage.samples == 6
    with meter.charging("eval"), torch.no_grad():
        policy.sample(["a handwritten one"], 4, torch.Generator().manual_seed(0))
    assert meter.accounts["eval"].nfe == 4 and meter.accounts["train"].nfe == 40


def test_reward_queries_counted(tiny_world):
    meter = Meter()
    reward = MeteredReward(REWARDS["digit"].from_world(tiny_world), meter)
    scores = reward(torch.rand(5, 1, 8, 8), ["the digit 4"] * 5)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and meter.usage.reward_queries == 5
    assert reward.name == "digit" and reward.differentiable
