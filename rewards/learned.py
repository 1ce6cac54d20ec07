"""A reward model learned from preference labels (Bradley-Terry), and its use as an ordinary reward.

r_phi(x, c) is a small CNN over the image with one output per digit, the prompt's digit picking the output, so
one network scores every prompt of the digits world. Trained on pairs (a, b, c, y) with y = 1 where a was
preferred, by the Bradley-Terry likelihood P(a > b | c) = sigmoid(r_phi(a, c) - r_phi(b, c)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.digits import digit_of


class RewardModel(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int] = (1, 8, 8), width: int = 32, classes: int = 10):
        super().__init__()
        channels, height, width_px = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),
            nn.Flatten(), nn.Linear(width * math.ceil(height / 2) * math.ceil(width_px / 2), 64), nn.GELU(),
            nn.Linear(64, classes),
        )

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores (B,) of images (B, C, H, W) in [0, 1] for their prompts."""
        digits = torch.tensor([digit_of(p) for p in prompts], device=images.device)
        return self.net(images * 2 - 1).gather(1, digits[:, None]).squeeze(1)


def bradley_terry_loss(score_a: torch.Tensor, score_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative mean log-likelihood of labels (B,) (1: a preferred, 0: b) under P(a > b) = sigmoid(s_a - s_b)."""
    return F.binary_cross_entropy_with_logits(score_a - score_b, labels.to(score_a))


class LearnedReward:
    """A trained RewardModel as a Reward (differentiable): what the classic pipeline's RL stage optimizes."""

    name = "learned"
    version = "1"
    differentiable = True
    higher_is_better = True

    def __init__(self, model: RewardModel):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model(images, prompts).float()
