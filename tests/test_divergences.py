"""The f-divergence library: closed forms against Monte Carlo and against torch.distributions."""

import math

import pytest
import torch

from methods.toolkit.divergences import DIVERGENCES, closed_form, monte_carlo, step_divergence

CLOSED = [name for name, d in DIVERGENCES.items() if d.closed_form is not None]


def gaussians(seed=0, shape=(3, 1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", CLOSED)
@pytest.mark.parametrize("std_p, std_q", [(0.5, 0.5), (0.6, 0.8)])
def test_closed_forms_agree_with_monte_carlo(name, std_p, std_q):
    if name == "tv" and std_p != std_q:
        pytest.skip("total variation has a closed form only for equal stds")
    mean_p, mean_q = gaussians()
    mean_q = mean_p + 0.15 * (mean_q - mean_p)  # moderate divergences: chi-square's estimate is heavy-tailed
    exact = closed_form(name, mean_p, std_p, mean_q, std_q)
    estimate = monte_carlo(
        name, mean_p, std_p, mean_q, std_q, samples=100_000, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(estimate, exact, rtol=0.03, atol=2e-3), (estimate, exact)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_a_policy_has_divergence_zero_from_itself(name):
    mean, _ = gaussians()
    value = step_divergence(name, mean, 0.7, mean, 0.7, samples=64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(value, torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_kl_matches_torch_distributions_per_dimension():
    mean_p, mean_q = gaussians()
    expected = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean_p, 0.5), torch.distributions.Normal(mean_q, 2.0)
        )
        .flatten(1)
        .mean(1)
    )
    assert torch.allclose(closed_form("kl", mean_p, 0.5, mean_q, 2.0), expected)
    reverse = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean_q, 2.0), torch.distributions.Normal(mean_p, 0.5)
        )
        .flatten(1)
        .mean(1)
    )
    assert torch.allclose(closed_form("reverse_kl", mean_p, 0.5, mean_q, 2.0), reverse)


def test_known_values_for_a_unit_shift_at_equal_stds():
    # one dimension, means 0 and 1, std 1
    p, q = torch.zeros(1, 1), torch.ones(1, 1)
    assert math.isclose(closed_form("kl", p, 1.0, q, 1.0).item(), 0.5)
    assert math.isclose(closed_form("hellinger", p, 1.0, q, 1.0).item(), 1 - math.exp(-1 / 8), rel_tol=1e-6)
    assert math.isclose(closed_form("chi2", p, 1.0, q, 1.0).item(), math.e - 1, rel_tol=1e-6)
    assert math.isclose(closed_form("tv", p, 1.0, q, 1.0).item(), math.erf(1 / (2 * math.sqrt(2))), rel_tol=1e-6)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_mixture_integrand_is_two_f_over_one_plus_t(name):
    u = torch.linspace(-6, 6, 101, dtype=torch.float64)
    t = torch.exp(u)
    divergence = DIVERGENCES[name]
    assert torch.allclose(divergence.mixture_integrand(u), 2 * divergence.f(t) / (1 + t), rtol=1e-9, atol=1e-12)
    assert divergence.f(torch.ones(1, dtype=torch.float64)).item() == 0


def test_js_is_bounded_by_log_2_and_symmetric():
    g = torch.Generator().manual_seed(0)
    far = monte_carlo("js", torch.zeros(1, 8), 0.1, torch.full((1, 8), 50.0), 0.1, 4000, g)
    assert math.isclose(far.item(), math.log(2), rel_tol=1e-3)
    p, q = gaussians()
    forward = monte_carlo("js", p, 0.5, q, 0.5, 100_000, torch.Generator().manual_seed(2))
    backward = monte_carlo("js", q, 0.5, p, 0.5, 100_000, torch.Generator().manual_seed(3))
    assert torch.allclose(forward, backward, rtol=0.03)


def test_monte_carlo_is_differentiable_in_the_policy_mean():
    mean_p, mean_q = gaussians()
    mean_p.requires_grad_(True)
    monte_carlo("js", mean_p, 0.5, mean_q, 0.5, 16, torch.Generator().manual_seed(0)).sum().backward()
    assert mean_p.grad is not None and mean_p.grad.abs().sum() > 0


def test_unknown_divergence_and_infinite_chi2_are_refused():
    p, q = gaussians()
    with pytest.raises(ValueError, match="unknown divergence 'kld'; valid: kl, reverse_kl, js"):
        closed_form("kld", p, 1.0, q, 1.0)
    with pytest.raises(ValueError, match="chi-square divergence is infinite"):
        closed_form("chi2", p, 2.0, q, 1.0)
    with pytest.raises(ValueError, match="no closed form"):
        closed_form("js", p, 1.0, q, 1.0)
