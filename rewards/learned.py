"""Reward models learned from preference labels (Bradley-Terry), and their use as an ordinary reward.

r_phi(x, c), trained on pairs (a, b, c, y) with y = 1 where a was preferred, by the Bradley-Terry likelihood
P(a > b | c) = sigmoid(r_phi(a, c) - r_phi(b, c)), on the architecture the world calls for
(World.learned_reward_model). A world with a prompt language of its own brings its own (the digits world's: one
output per digit, worlds/digits/rewards.py); PromptRewardModel takes any prompts (the scenes and scale worlds): a
small CNN over the image at 64 x 64 px and a bag of the prompt's hashed words, joined by an MLP. Each is trained
from scratch: the published reward models start from pretrained CLIP or BLIP backbones, which would make the learned
reward a near copy of the hidden one when that is PickScore or ImageReward. Each moves the images to its own device,
so the preference data can stay on the CPU.
"""

from __future__ import annotations

import re
import zlib

import torch
import torch.nn.functional as F
from torch import nn


def word_buckets(prompts: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.EmbeddingBag inputs for the prompts' lowercase words hashed (CRC-32, stable across runs) into `buckets`,
    each bag led by bucket 0 so an empty prompt has one: (ids, offsets)."""
    bags = [
        [0] + [1 + zlib.crc32(w.encode()) % (buckets - 1) for w in re.findall(r"[a-z0-9]+", p.lower())] for p in prompts
    ]
    offsets = torch.tensor([0] + [len(b) for b in bags[:-1]]).cumsum(0)
    return torch.tensor([i for b in bags for i in b]), offsets


class PromptRewardModel(nn.Module):
    def __init__(
        self, image_shape: tuple[int, int, int] = (3, 512, 512), width: int = 32, buckets: int = 4096, side: int = 64
    ):
        super().__init__()
        self.side, self.buckets = side, buckets
        self.image = nn.Sequential(
            nn.Conv2d(image_shape[0], width, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.words = nn.EmbeddingBag(buckets, 2 * width, mode="mean")
        self.head = nn.Sequential(nn.Linear(6 * width, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores (B,) of images (B, 3, H, W) in [0, 1] for their prompts."""
        device = self.words.weight.device
        pixels = F.interpolate(
            images.to(device).float(), size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False
        )
        image = self.image(pixels * 2 - 1)
        ids, offsets = word_buckets(prompts, self.buckets)
        text = self.words(ids.to(device), offsets.to(device))
        return self.head(torch.cat([image, text, image * text], dim=1)).squeeze(1)


def bradley_terry_loss(score_a: torch.Tensor, score_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative mean log-likelihood of labels (B,) (1: a preferred, 0: b) under P(a > b) = sigmoid(s_a - s_b)."""
    return F.binary_cross_entropy_with_logits(score_a - score_b, labels.to(score_a))


class LearnedReward:
    """A trained reward model as a Reward (differentiable): what the classic pipeline's RL stage optimizes."""

    name = "learned"
    version = "1"
    differentiable = True
    higher_is_better = True

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model(images, prompts).float()
