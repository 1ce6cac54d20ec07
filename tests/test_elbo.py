"""The ELBO recipe (methods/elbo.py): its estimator and its loss against their formulas, exactly where they have an
answer. Its contract (finite steps, determinism, resume, exact metering) is tests/test_methods.py's."""

import torch

from methods.elbo import adaptive_elbo, proximal_policy_gradient_loss


def test_the_true_velocity_recovers_the_sample_and_the_weight_makes_the_scale_the_error_s():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, generator=generator), torch.randn(3, 2, 4, generator=generator)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x_t = (1 - t.float().view(-1, 1, 1)) * x0 + t.float().view(-1, 1, 1) * noise
    exact = adaptive_elbo(x_t, t, noise - x0, x0)
    assert exact.abs().max() < 1e-5  # x0_hat = x0 up to rounding
    # a constant error c on every dimension: -c^2 / |c| = -|c|, whatever t is
    shifted = adaptive_elbo(x_t, t, noise - x0 - 0.3 / t.float().view(-1, 1, 1), x0)
    torch.testing.assert_close(shifted, torch.full((3,), -0.3))


def test_the_proximal_loss_is_a_weighted_elbo_gradient_that_vanishes_where_log_rho_equals_the_advantage():
    elbo = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantages = torch.tensor([0.3, -0.2, 0.1])
    for old, expected in (
        (elbo.detach(), -advantages / 3),  # on-policy: rho = 1, the advantage-weighted ELBO gradient
        (elbo.detach() - advantages, torch.zeros(3)),  # log rho = A: nothing left to learn
    ):
        loss, log_ratio = proximal_policy_gradient_loss(elbo, old, advantages)
        (gradient,) = torch.autograd.grad(loss, elbo)
        torch.testing.assert_close(gradient, expected)
    rho = torch.tensor([1.5, 0.5, 1.0])
    loss, _ = proximal_policy_gradient_loss(elbo, elbo.detach() - rho.log(), advantages)
    (gradient,) = torch.autograd.grad(loss, elbo)
    torch.testing.assert_close(gradient, -rho * (advantages - rho.log()) / 3)
