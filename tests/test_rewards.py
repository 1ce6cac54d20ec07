import pytest
import torch

from rewards.compress import png_bytes
from worlds import REWARDS
from worlds.digits.data import digit_of, load_prompts


@pytest.mark.parametrize(
    "prompt, digit",
    [("a handwritten seven", 7), ("the digit 3", 3), ("Number ZERO", 0), ("number 9 in someone's handwriting", 9)],
)
def test_digit_of(prompt, digit):
    assert digit_of(prompt) == digit


@pytest.mark.parametrize("prompt", ["a cat", "seven or 8", "the digit 12"])
def test_digit_of_rejects_prompts_naming_no_single_digit(prompt):
    with pytest.raises(ValueError, match="exactly one digit"):
        digit_of(prompt)


def test_prompt_sets_cover_every_digit_and_unseen_phrasings_are_new():
    train, seen, unseen = (load_prompts()[s] for s in ("train", "eval_seen", "eval_unseen"))
    for prompts in (train, seen, unseen):
        assert sorted({digit_of(p) for p in prompts}) == list(range(10))
    assert set(seen) <= set(train) and not set(unseen) & set(train)


def test_digit_reward_is_a_log_probability_with_gradients_to_pixels(tiny_world):
    reward = REWARDS["digit"].from_world(tiny_world)
    images = torch.rand(10, 1, 8, 8, requires_grad=True)
    prompts = [f"the digit {d}" for d in range(10)]
    scores = reward(images, prompts)
    assert (scores <= 0).all()
    # log-probabilities of the ten digits of one image sum (in probability) to one
    same = reward(images[:1].expand(10, -1, -1, -1), prompts)
    assert torch.allclose(same.exp().sum(), torch.tensor(1.0), atol=1e-5)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_compress_is_minus_png_bytes_and_prefers_flat_images():
    reward = REWARDS["compress"]()
    flat, noisy = torch.zeros(1, 1, 8, 8), torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = reward(torch.cat([flat, noisy]), ["a one", "a one"])
    assert scores[0] == -png_bytes(torch.zeros(1, 8, 8, dtype=torch.uint8).numpy())
    assert scores[0] > scores[1] and not reward.differentiable
