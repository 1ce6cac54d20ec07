"""The digits world's rewards, read from its networks and its prompt language (worlds/digits/data.py).

digit  log-probability of the prompted digit under the world's reward classifier (differentiable). This is the proxy
       reward methods optimise. The classifier was trained on the train split only; the judge that scores the
       leaderboard is a different network trained on data this one never saw, so a method that fools this
       classifier without drawing better digits gains reward but not judge accuracy.
gold   the simulated annotator's hidden taste (differentiable):

         g(x, c) = log p_judge(c | x) + INK_WEIGHT * ink(x),   ink(x) = mean pixel intensity in [0, 1],
       the judge's confidence that the image shows the prompted digit plus a stroke property the annotator likes
       (bold strokes), which no other signal of the world rewards. Methods that learn from feedback never read it:
       they see only the annotator's preference labels and demonstrations (rewards/feedback.py). As an ordinary
       reward it is an oracle: a method trained on it directly is the upper bound of learning it from feedback.
       Since the judge is part of it, judge accuracy is no longer an independent check on runs trained on `gold`.
And the architecture a method that learns a reward from preferences uses here (DigitRewardModel).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from worlds.digits.data import digit_of


class DigitReward:
    name = "digit"
    differentiable = True
    higher_is_better = True

    def __init__(self, classifier: nn.Module, weights_hash: str):
        self.classifier = classifier.eval().requires_grad_(False)
        self.version = f"1-{weights_hash[:8]}"

    @classmethod
    def from_world(cls, world) -> DigitReward:
        return cls(world.reward_classifier, world.hash_of("reward_classifier"))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = torch.tensor([digit_of(p) for p in prompts], device=images.device)
        log_probs = torch.log_softmax(self.classifier(images), dim=1)
        return log_probs.gather(1, targets[:, None]).squeeze(1).float()


INK_WEIGHT = 10.0
"""Measured on the data: ink has std 0.033 within a digit, so a bolder (+1 std) stroke is worth +0.33, as
much as raising the judge's probability of the right digit by 40%."""


class GoldReward:
    name = "gold"
    differentiable = True
    higher_is_better = True

    def __init__(self, judge: nn.Module, weights_hash: str):
        self.judge = judge.eval().requires_grad_(False)
        self.version = f"1-{weights_hash[:8]}"

    @classmethod
    def from_world(cls, world) -> GoldReward:
        return cls(world.judge, world.hash_of("judge"))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = torch.tensor([digit_of(p) for p in prompts], device=images.device)
        log_probs = torch.log_softmax(self.judge(images), dim=1).gather(1, targets[:, None]).squeeze(1)
        return (log_probs + INK_WEIGHT * images.flatten(1).mean(dim=1)).float()


class DigitRewardModel(nn.Module):
    """The learned reward's architecture here (World.learned_reward_model): a small CNN over the image with one output
    per digit, the prompt's digit picking the output, so one network scores every prompt."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 8, 8), width: int = 32, classes: int = 10):
        super().__init__()
        channels, height, width_px = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(width * math.ceil(height / 2) * math.ceil(width_px / 2), 64),
            nn.GELU(),
            nn.Linear(64, classes),
        )

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores (B,) of images (B, C, H, W) in [0, 1] for their prompts."""
        images = images.to(self.net[0].weight.device)
        digits = torch.tensor([digit_of(p) for p in prompts], device=images.device)
        return self.net(images * 2 - 1).gather(1, digits[:, None]).squeeze(1)
