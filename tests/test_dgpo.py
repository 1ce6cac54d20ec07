"""DGPO (methods/dgpo.py): its loss against the group preference objective it descends, exactly, the clip, and the
group's shared point on the forward path. Its contract (finite steps, determinism, resume, exact metering) is
tests/test_methods.py's."""

import torch

from methods.dgpo import dgpo_loss
from methods.toolkit.flow_matching import flow_matching_error


def group_of(size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    v_theta = torch.randn(size, 2, 3, generator=generator).requires_grad_()
    target = torch.randn(size, 2, 3, generator=generator)
    reference_error = flow_matching_error(torch.randn(size, 2, 3, generator=generator), target)
    advantages = torch.tensor([1.5, -0.5, 0.5, -1.5])[:size]
    return v_theta, target, reference_error, advantages


def test_the_loss_descends_the_group_preference_objective():
    """For one group, beta_dpo times the loss's gradient is the gradient of -log sigma(R_theta(G)),
    R_theta(G) = -beta_dpo / G sum_i A_i (l_theta^i - l_ref^i): the paper's objective, written out here."""
    beta = 30.0
    v_theta, target, reference_error, advantages = group_of()
    error = flow_matching_error(v_theta, target)
    implicit_reward = -beta / 4 * (advantages * (error - reference_error)).sum()
    (objective_gradient,) = torch.autograd.grad(-torch.nn.functional.logsigmoid(implicit_reward), v_theta)
    loss, weight, held = dgpo_loss(v_theta, target, reference_error, error.detach(), advantages, 4, beta, 1e9)
    (loss_gradient,) = torch.autograd.grad(loss, v_theta)
    torch.testing.assert_close(beta * loss_gradient, objective_gradient, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight, torch.sigmoid(-implicit_reward.detach()).view(1))
    assert not held.any()


def test_a_group_at_the_reference_weighs_one_half_and_groups_are_weighed_apart():
    v_theta, target, _, advantages = group_of()
    error = flow_matching_error(v_theta, target).detach()
    _, weight, _ = dgpo_loss(v_theta, target, error, error, advantages, 4, 100.0, 1e9)
    assert weight.tolist() == [0.5]
    v2, t2, r2, a2 = group_of(seed=1)
    _, weights, _ = dgpo_loss(
        torch.cat([v_theta, v2]),
        torch.cat([target, t2]),
        torch.cat([error, r2]),
        torch.cat([error, r2]),
        torch.cat([advantages, a2]),
        4,
        100.0,
        1e9,
    )
    assert weights[0] == 0.5 and weights[1] != 0.5


def test_a_sample_moved_past_the_clip_the_way_its_advantage_pushes_gets_no_gradient():
    """Samples 0 (A > 0) and 1 (A < 0) have moved past 1 +- clip_range the way their advantages push; samples 2 and 3
    have moved against theirs. Only 0 and 1 are held."""
    v_theta, target, reference_error, advantages = group_of()
    error = flow_matching_error(v_theta, target).detach()
    old_error = error + torch.tensor([0.1, -0.1, -0.1, 0.1])  # ratio exp(l_old - l): e^0.1, e^-0.1, e^-0.1, e^0.1
    loss, _, held = dgpo_loss(v_theta, target, reference_error, old_error, advantages, 4, 30.0, 0.05)
    assert held.tolist() == [True, True, False, False]
    (gradient,) = torch.autograd.grad(loss, v_theta)
    per_sample = gradient.flatten(1).abs().sum(dim=1)
    assert per_sample[0] == 0 and per_sample[1] == 0 and (per_sample[2:] > 0).all()


def test_a_group_shares_its_point_on_the_path_and_one_sample_draws_as_before(tiny_world):
    policy = tiny_world.make_policy("flow")
    x0 = torch.randn(6, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    x_t, t, target = policy.flow_matching_point(x0, torch.Generator().manual_seed(1), shared=3)
    noise = target + x0
    assert torch.equal(t[:3], t[0].repeat(3)) and t[0] != t[3]
    torch.testing.assert_close(noise[1], noise[0])  # up to the rounding of (noise - x0) + x0
    assert (noise[3] - noise[0]).abs().max() > 0.1
    generator = torch.Generator().manual_seed(1)
    alone_t = torch.rand(6, generator=generator, dtype=torch.float64)
    alone_noise = torch.randn(x0.shape, generator=generator)
    x_t, t, target = policy.flow_matching_point(x0, torch.Generator().manual_seed(1))
    assert torch.equal(t, alone_t) and torch.equal(target, alone_noise - x0)
