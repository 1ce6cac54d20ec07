"""AWM's loss (methods/awm.py) against its formula: at the sampling policy, the advantage-weighted flow-matching
gradient; once a sample's likelihood moved past the clip, no gradient from it."""

import torch

from methods.awm import awm_loss, flow_log_likelihood

V_THETA = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
TARGET = torch.tensor([[0.0, 2.0], [1.0, 1.0], [3.0, 1.0]])
ADVANTAGES = torch.tensor([1.5, -1.0, 0.5])


def test_at_the_sampling_policy_the_gradient_is_the_advantage_weighted_flow_matching_gradient():
    v_theta = V_THETA.clone().requires_grad_()
    old = flow_log_likelihood(V_THETA, TARGET)  # per-sample errors 0.5, 2.5, 2.0
    assert torch.equal(old, torch.tensor([-0.5, -2.5, -2.0]))
    loss, gap, ratio = awm_loss(v_theta, TARGET, old, ADVANTAGES, 1e-4, None, 0.0)
    assert torch.isclose(loss, -ADVANTAGES.mean()) and gap == 0 and torch.allclose(ratio, torch.ones(3))
    loss.backward()
    reference = V_THETA.clone().requires_grad_()
    (ADVANTAGES * (reference - TARGET).pow(2).mean(dim=1)).mean().backward()
    torch.testing.assert_close(v_theta.grad, reference.grad)


def test_the_velocity_gap_to_the_reference_is_added_times_beta():
    v_ref = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]])  # gaps 2.0, 0.5, 0.5
    old = flow_log_likelihood(V_THETA, TARGET)
    loss, gap, _ = awm_loss(V_THETA, TARGET, old, ADVANTAGES, 1e-4, v_ref, 0.1)
    assert torch.isclose(gap, torch.tensor(1.0)) and torch.isclose(loss, -ADVANTAGES.mean() + 0.1)


def test_a_sample_whose_likelihood_moved_past_the_clip_in_its_advantages_direction_gives_no_gradient():
    v_theta = V_THETA.clone().requires_grad_()
    moved = flow_log_likelihood(V_THETA, TARGET) - torch.tensor([0.01, -0.01, 0.0])  # r = e^0.01 for the first
    loss, _, ratio = awm_loss(v_theta, TARGET, moved, ADVANTAGES, 1e-4, None, 0.0)
    loss.backward()
    assert ratio[0] > 1 + 1e-4 and ratio[1] < 1 - 1e-4  # better sample more likely, worse one less: both done
    assert v_theta.grad is not None and (v_theta.grad[:2] == 0).all() and (v_theta.grad[2] != 0).any()
