"""GDPO (methods/gdpo.py): the decoupled advantages against the paper's example of GRPO's collapse and against GRPO
with one reward, and a step on a combined reward metered as one. Its contract on one reward (finite steps,
determinism, resume, exact metering) is tests/test_methods.py's."""

import math

import torch
from test_methods import make

from methods.gdpo import decoupled_advantages
from methods.toolkit.policy_gradient import group_normalized_advantages
from methods.trainer import SingleProcess
from worlds.digits.build import GENERATORS

NO_CLIP = 1e9


def test_two_binary_rewards_grpo_collapses_gdpo_keeps_apart():
    """Groups of two, rewards (r1, r2): (1, 1) against (0, 0), and (1, 0) against (0, 0). GRPO normalizes the sums
    2 vs 0 and 1 vs 0 to the same +-1; GDPO gives +-2 and +-1 before the batch's scale sqrt(2.5)."""
    first = torch.tensor([1.0, 0.0, 1.0, 0.0])
    second = torch.tensor([1.0, 0.0, 0.0, 0.0])
    grpo = group_normalized_advantages(first + second, 2, NO_CLIP)
    assert torch.allclose(grpo, torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5)
    gdpo = decoupled_advantages({"r1": first, "r2": second}, {"r1": 1.0, "r2": 1.0}, 2, SingleProcess(), NO_CLIP)
    assert torch.allclose(gdpo, torch.tensor([2.0, -2.0, 1.0, -1.0]) / math.sqrt(2.5), atol=1e-5)


def test_weights_scale_each_normalized_term_and_one_reward_is_grpo_over_the_batch():
    torch.manual_seed(0)
    a, b = torch.randn(12), 100 * torch.randn(12)  # b's spread is 100x a's: GDPO weighs them by w alone
    weighted = decoupled_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.25}, 3, SingleProcess(), NO_CLIP)
    raw = group_normalized_advantages(a, 3, NO_CLIP) + 0.25 * group_normalized_advantages(b, 3, NO_CLIP)
    assert torch.allclose(weighted, (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-5)
    alone = decoupled_advantages({"a": a}, {"a": 1.0}, 3, SingleProcess(), NO_CLIP)
    grpo = group_normalized_advantages(a, 3, NO_CLIP)
    assert torch.allclose(alone, (grpo - grpo.mean()) / grpo.std(unbiased=False), atol=1e-5)
    assert decoupled_advantages({"a": a}, {"a": 1.0}, 3, SingleProcess(), 0.5).abs().max() <= 0.5


def test_a_step_on_a_combined_reward_reads_each_term_and_is_metered_as_one_reward(tiny_world):
    trainer, meter = make(tiny_world, "gdpo", "flow", reward="digit+0.5*gold")
    stats = trainer.step()
    assert math.isclose(stats["reward"], stats["reward_digit"] + 0.5 * stats["reward_gold"], rel_tol=1e-6)
    expected = trainer.step_usage(trainer.config, GENERATORS["flow"][1])["reward_queries"]
    assert meter.accounts["train"].reward_queries == expected
