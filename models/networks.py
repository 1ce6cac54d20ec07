"""The embedded world's networks: a text-conditioned denoiser and two digit classifiers.

The denoiser is the tiny counterpart of Stable Diffusion's UNet: it predicts the noise in an
image given the timestep and a sentence embedding of the prompt. At 8x8 pixels a residual MLP
is both faster on a CPU and as good as a small convolutional net, so it is an MLP. The two
classifiers deliberately differ in architecture (MLP vs CNN) so that the judge does not share
the reward classifier's blind spots.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class FiLMBlock(nn.Module):
    """LayerNorm -> scale/shift from the conditioning -> MLP, with a residual connection."""

    def __init__(self, width: int, cond_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class TextConditionedDenoiser(nn.Module):
    """eps_theta(x_t, t, text): (B, C, H, W), (B,), (B, text_dim) -> (B, C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], text_dim: int, width: int = 384, depth: int = 4):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(image_shape)
        self.time_dim = width
        self.cond = nn.Sequential(nn.Linear(width + text_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(pixels, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, pixels))

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cond = self.cond(torch.cat([timestep_embedding(t, self.time_dim), text], dim=1))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h).view(x.shape)


class MLPClassifier(nn.Module):
    """The reward classifier: logits over 10 digits from raw pixels."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 256, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(image_shape), hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


class CNNClassifier(nn.Module):
    """The judge: a small CNN whose penultimate layer is the feature space for FID and diversity."""

    def __init__(self, image_shape: tuple[int, int, int], features: int = 64, classes: int = 10):
        super().__init__()
        channels, height, width = image_shape
        self.num_features = features
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(64 * math.ceil(height / 2) * math.ceil(width / 2), features),
            nn.GELU(),
        )
        self.head = nn.Linear(features, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class FeatureExtractor(nn.Module):
    """Adapts the judge's trunk to torchmetrics' `feature=` protocol (images in [0, 1])."""

    def __init__(self, judge: CNNClassifier):
        super().__init__()
        self.judge = judge
        self.num_features = judge.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images)
