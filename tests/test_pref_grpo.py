"""Pref-GRPO (methods/pref_grpo.py): win rates against their definition, and the update's indifference to the size of
the reward's gaps. Its contract (finite steps, determinism, resume, exact metering) is tests/test_methods.py's."""

import torch
from test_methods import flat_parameters, make

from methods.pref_grpo import win_rates


def test_win_rates_count_each_win_once_and_each_tie_half():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0])  # two groups of four
    # group 1: 0.1 beats none; 0.9 beats all three; each 0.5 beats 0.1 and ties the other 0.5; group 2: all tie
    expected = torch.tensor([0.0, 1.0, 1.5 / 3, 1.5 / 3, 0.5, 0.5, 0.5, 0.5])
    assert torch.equal(win_rates(rewards, 2), expected)
    assert torch.equal(win_rates(torch.tensor([2.0, 1.0]), 1), torch.tensor([1.0, 0.0]))


def update_under(tiny_world, name: str, transform) -> torch.Tensor:
    trainer, _ = make(tiny_world, name, "flow", reward="digit")
    score = trainer.reward
    trainer.reward = lambda images, prompts: transform(score(images, prompts))
    before = flat_parameters(trainer)
    trainer.step()
    return flat_parameters(trainer) - before


def test_a_reward_that_orders_the_group_alike_gives_pref_grpo_the_same_update_not_flow_grpo(tiny_world):
    """R and R^3 + 5 R order every group the same way: Pref-GRPO's win rates, and its update, are the same bit for
    bit, while Flow-GRPO's normalized scores, and its update, differ."""
    for name, same in (("pref_grpo", True), ("flow_grpo", False)):
        plain = update_under(tiny_world, name, lambda r: r)
        stretched = update_under(tiny_world, name, lambda r: r**3 + 5 * r)
        assert plain.abs().sum() > 0 and torch.equal(plain, stretched) == same, name
