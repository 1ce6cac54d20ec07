"""Direct-Align (methods/direct_align.py): the recovery is exact on the straight path and ReFL's one-step prediction
where the step reaches t = 0, the discount's ends, and its options refused in one line. Its contract (finite steps,
determinism, resume, exact metering) is tests/test_methods.py's."""

import pytest
import torch

from methods.direct_align import Config, discount, recovered_clean


def test_the_known_noise_recovers_the_clean_image_exactly_on_the_straight_path():
    torch.manual_seed(0)
    clean, noise = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    sigma = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95])
    view = sigma.view(-1, 1, 1, 1)
    noised = (1 - view) * clean + view * noise
    for step_size in (0.02, 0.1, 0.5, 1.0):
        assert torch.allclose(recovered_clean(noised, noise - clean, sigma, step_size, noise), clean, atol=1e-5)


def test_a_step_to_t_zero_is_refls_one_step_prediction():
    torch.manual_seed(1)
    noised, velocity, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 0.2, 0.3])
    predicted = noised - sigma.view(-1, 1, 1, 1) * velocity
    assert torch.allclose(recovered_clean(noised, velocity, sigma, 0.3, noise), predicted, atol=1e-6)


def test_the_discount_rises_from_zero_at_the_least_noise_to_one_at_the_most():
    sigma = torch.linspace(0.1, 0.9, 9)
    weights = discount(sigma, 0.1, 0.9)
    assert weights[0] == 0 and torch.isclose(weights[-1], torch.tensor(1.0))
    assert torch.all(weights[1:] > weights[:-1]) and torch.isclose(weights[4], torch.tensor(0.75))  # 1.5 / 2


def test_a_noise_range_that_is_empty_is_refused_in_one_line():
    with pytest.raises(ValueError, match="sigma_min must be below direct_align.sigma_max, got 0.6 and 0.6"):
        Config(sigma_min=0.6, sigma_max=0.6)
