"""GARDO (methods/gardo.py): the uncertainty, the gate and its share, the diversity-aware advantages against hand
computations, the gated KL against the plain and the absent one, and the reference's resets across a resume. Its
contract on one reward (finite steps, determinism, resume, exact metering) is tests/test_methods.py's."""

import math

import torch
from test_methods import flat_parameters, make

from bench.runner import load_checkpoint
from methods.gardo import adapted_share, batch_win_rates, diversity_advantages, gate, uncertainty
from methods.toolkit.policy_gradient import RatioClip, ppo_chain_backward
from models.io import atomic_torch_save
from models.sampler import Sampler


def test_uncertainty_is_how_much_more_the_proxy_prizes_a_sample_than_the_auxiliaries_do():
    assert torch.equal(batch_win_rates(torch.tensor([3.0, 1.0, 1.0, 0.0])), torch.tensor([3.0, 1.5, 1.5, 0.0]) / 3)
    proxy = torch.tensor([4.0, 3.0, 2.0, 1.0])  # sample 0 is the proxy's best and every auxiliary's worst
    first, second = torch.tensor([0.0, 3.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    u = uncertainty({"proxy": proxy, "first": first, "second": second}, "proxy")
    expected = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]) - torch.tensor([0.0, 1 + 1 / 3, 2 / 3 + 2 / 3, 1 / 3 + 1]) / 2
    assert torch.allclose(u, expected) and int(u.argmax()) == 0


def test_the_gate_takes_the_most_uncertain_share_of_positive_uncertainty_and_its_share_adapts():
    u = torch.tensor([0.3, -0.2, 0.9, 0.1, 0.0, 0.5])
    assert gate(u, 0.3).tolist() == [False, False, True, False, False, True]  # ceil(0.3 * 6) = 2: 0.9 and 0.5
    assert gate(u, 1.0).tolist() == [True, False, True, True, False, True]  # only the positive ones
    assert math.isclose(adapted_share(0.1, [0.2, 0.3], 0.4), 0.11)
    assert math.isclose(adapted_share(0.1, [0.2, 0.3], 0.1), 0.09)
    assert adapted_share(0.1, [0.2, 0.3], 0.25) == 0.1
    assert adapted_share(0.19, [0.2], 0.9) == 0.2 and adapted_share(0.021, [0.2], 0.1) == 0.02


def test_diversity_scales_only_the_advantages_above_the_group_mean_by_the_nearest_neighbour_distance():
    # one group of three: samples 0 and 1 draw the same image (distance 0), sample 2 another (distance 1 to both)
    rewards = torch.tensor([1.0, 0.0, 2.0])
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    std = math.sqrt(2 / 3)
    # centred [0, -1, 1]; the mean distance is 1/3, so sample 2's advantage is scaled by 1 / (1/3) = 3
    expected = torch.tensor([0.0, -1.0 / std, 3.0 / std])
    assert torch.allclose(diversity_advantages(rewards, features, 1, 10.0), expected, atol=1e-5)
    assert diversity_advantages(rewards, features, 1, 1.0).abs().max() == 1.0


def test_the_gated_kl_is_the_plain_one_over_every_chain_and_no_kl_over_none(tiny_world):
    policy, reference = tiny_world.make_policy("flow"), tiny_world.make_policy("flow")
    with torch.no_grad():
        for p in policy.trainable_parameters():  # off the reference, so the KL is not trivial
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        chain = policy.sample(["a handwritten five"] * 4, 4, torch.Generator().manual_seed(1), Sampler("flow-sde", 0.7))
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5])

    def gradient(reference_policy, kl_gate):
        policy.network.zero_grad()
        stats = ppo_chain_backward(
            policy,
            reference_policy,
            chain,
            chain.stochastic_steps,
            advantages,
            RatioClip(0.2),
            0.5,
            True,
            2,
            kl_gate=kl_gate,
        )
        return stats, torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])

    plain, every = gradient(reference, None), gradient(reference, torch.ones(4, dtype=torch.bool))
    assert plain[0] == every[0] and torch.equal(plain[1], every[1]) and min(plain[0]["kl"]) > 0
    closed, absent = gradient(reference, torch.zeros(4, dtype=torch.bool)), gradient(None, None)
    assert torch.equal(closed[1], absent[1]) and set(closed[0]["kl"]) == {0.0}
    some = gradient(reference, torch.tensor([True, False, False, False]))
    assert not torch.equal(some[1], closed[1]) and not torch.equal(some[1], plain[1])


def round_trip(trainer, tiny_world, tmp_path, reward, options):
    """`trainer` and a trainer of another seed given its state through a file, each after one more step."""
    atomic_torch_save(trainer.state_dict(), tmp_path / "state.pt")
    restored, _ = make(tiny_world, "gardo", "flow", seed=99, reward=reward, **options)
    restored.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    assert trainer.step() == restored.step()
    assert torch.equal(flat_parameters(trainer), flat_parameters(restored))
    return restored


def test_the_reference_resets_when_its_kl_passes_the_threshold_and_a_resume_keeps_it(tiny_world, tmp_path):
    # any KL resets: the second minibatch's is > 0 (one reward: the gate takes every chain)
    options = {"kl_threshold": 1e-30, "kl_coef": 0.5}
    trainer, _ = make(tiny_world, "gardo", "flow", reward="digit", **options)
    trainer.step()
    assert trainer.reset_due and trainer.last_reset == 0
    base = torch.cat([p.flatten() for p in trainer.reference.network.parameters()])
    trainer.step()  # resets first: the reference is the policy as it was after the first step
    moved = torch.cat([p.flatten() for p in trainer.reference.network.parameters()])
    assert trainer.last_reset == 1 and not torch.equal(base, moved)
    round_trip(trainer, tiny_world, tmp_path, "digit", options)


def test_the_gates_share_and_its_recent_uncertainties_survive_a_resume(tiny_world, tmp_path):
    trainer, _ = make(tiny_world, "gardo", "flow", reward="digit+0.5*gold")
    trainer.step(), trainer.step()
    restored = round_trip(trainer, tiny_world, tmp_path, "digit+0.5*gold", {})
    assert trainer.share == restored.share and trainer.recent == restored.recent and len(trainer.recent) == 3
