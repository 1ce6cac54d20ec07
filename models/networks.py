"""The embedded world's networks: a text-conditioned denoiser and two digit classifiers.

The denoiser is the tiny counterpart of Stable Diffusion's UNet: it predicts the noise in an
image given the timestep and a sentence embedding of the prompt. At 8x8 pixels a residual MLP
is both faster on a CPU and as good as a small convolutional net, so it is an MLP. The two
classifiers deliberately differ in architecture (MLP vs CNN) so that the judge does not share
the reward classifier's blind spots.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def cnn_trunk(image_shape: tuple[int, int, int], features: int) -> nn.Sequential:
    """The judges' small CNN: (N, *image_shape) in model space -> (N, features)."""
    channels, height, width = image_shape
    return nn.Sequential(
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


class CNNClassifier(nn.Module):
    """The judge: a small CNN whose penultimate layer is the feature space for FID and diversity."""

    def __init__(self, image_shape: tuple[int, int, int], features: int = 64, classes: int = 10):
        super().__init__()
        self.num_features = features
        self.trunk = cnn_trunk(image_shape, features)
        self.head = nn.Linear(features, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def slots_of(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, S, C, patch, patch): the image's patch x patch slots in reading order."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, (h // patch) * (w // patch), c, patch, patch)


def image_of(slots: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `slots_of`: (B, S, C, patch, patch) -> (B, C, height, width)."""
    b, _, c, patch, _ = slots.shape
    grid = slots.reshape(b, height // patch, width // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, height, width)


class SlotBlock(nn.Module):
    """A transformer block over the slots, modulated by the timestep (DiT's adaLN-Zero): self-attention among the
    slots, cross-attention from the slots to the prompt's tokens, an MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_self = nn.LayerNorm(width, elementwise_affine=False)
        self.norm_cross = nn.LayerNorm(width)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_q = nn.Linear(width, width)
        self.cross_out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        # adaLN-Zero: every block starts as the identity
        for layer in (self.modulation, self.cross_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, -1)

    def forward(
        self, h: torch.Tensor, cond: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=2)
        q, k, v = self.qkv(self.norm_self(h) * (1 + scale1) + shift1).chunk(3, dim=2)
        attended = nn.functional.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        h = h + gate1 * self.self_out(self._merge(attended))
        attended = nn.functional.scaled_dot_product_attention(
            self._heads(self.cross_q(self.norm_cross(h))), keys, values, attn_mask=mask
        )
        h = h + self.cross_out(self._merge(attended))
        return h + gate2 * self.mlp(self.norm_mlp(h) * (1 + scale2) + shift2)


class SlotTransformer(nn.Module):
    """eps_theta(x_t, t, tokens) (or the velocity): (B, C, H, W), (B,), (B, L, text_dim) -> (B, C, H, W).

    The compositional world's generator: a small DiT whose patches are the scene's slots, so a token is one slot.
    The slots attend to each other (a count or a relation spans slots) and to the prompt's token embeddings, which
    are projected to keys and values once and shared by every block (padding tokens, all zeros, are masked). The
    prompt's mean token, normalised, joins the timestep in the adaLN conditioning (as SD3's pooled text embedding
    does), so every slot sees the whole prompt in every block.

    With `from_data`, the network predicts the clean image and `from_data(x_t, t, x0)` turns it into its family's
    output (flow.velocity_from_data, diffusion.epsilon_from_data). A slot is 192 numbers and so is a token: a
    network asked for the noise (or the velocity, which holds it) must carry the noise through that bottleneck and
    leaves some in its samples, while the clean slot lies on the digits' low-dimensional manifold (JiT, Li and He
    2025, arXiv 2511.13720)."""

    def __init__(
        self,
        image_shape,
        text_dim: int,
        patch: int,
        width: int = 192,
        depth: int = 4,
        heads: int = 4,
        from_data: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.from_data = from_data
        channels, height, image_width = self.image_shape
        self.patch, self.heads = patch, heads
        slots = (height // patch) * (image_width // patch)
        self.inp = nn.Linear(channels * patch * patch, width)
        self.position = nn.Parameter(torch.randn(slots, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.text = nn.Linear(text_dim, 2 * width)
        self.pooled = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.blocks = nn.ModuleList(SlotBlock(width, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, channels * patch * patch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        slots = slots_of(x, self.patch)
        b, s = slots.shape[:2]
        h = self.inp(slots.flatten(2)) + self.position
        present = (text != 0).any(dim=2)
        pooled = (text * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)
        cond = self.time(timestep_embedding(t, h.shape[-1])) + self.pooled(pooled)
        keys, values = self.text(text).chunk(2, dim=2)
        heads = self.heads
        keys = keys.view(b, -1, heads, keys.shape[-1] // heads).transpose(1, 2)
        values = values.view(b, -1, heads, values.shape[-1] // heads).transpose(1, 2)
        mask = present[:, None, None, :]
        for block in self.blocks:
            h = block(h, cond, keys, values, mask)
        out = image_of(self.out(self.norm_out(h)).view(b, s, *slots.shape[2:]), *self.image_shape[1:])
        return out if self.from_data is None else self.from_data(x, t, out)


class SlotReader(nn.Module):
    """A scene reader: each slot's digit (10: empty) and colour logits from its pixels, one network shared by the
    slots. `trunk` maps a slot (N, C, patch, patch) in model space to features (N, num_features)."""

    def __init__(self, trunk: nn.Module, num_features: int, patch: int, classes: int = 11, colours: int = 3):
        super().__init__()
        self.trunk, self.patch, self.num_features = trunk, patch, num_features
        self.digit = nn.Linear(num_features, classes)
        self.colour = nn.Linear(num_features, colours)

    def features_of_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """Single slots (N, C, patch, patch) in [0, 1] -> (N, num_features)."""
        return self.trunk(slots * 2 - 1)

    def slot_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, S, num_features)."""
        slots = slots_of(images, self.patch)
        return self.features_of_slots(slots.flatten(0, 1)).view(*slots.shape[:2], -1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The whole scene's features, its slots' in reading order: (B, S * num_features)."""
        return self.slot_features(images).flatten(1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit logits (B, S, classes) and colour logits (B, S, colours)."""
        features = self.slot_features(images)
        return self.digit(features), self.colour(features)

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[list[tuple[int, int]]]:
        """Each image's most likely scene: (digit class, colour) per slot, in reading order."""
        digit_logits, colour_logits = self(images)
        return torch.stack([digit_logits.argmax(2), colour_logits.argmax(2)], dim=2).tolist()


def mlp_slot_reader(channels: int, patch: int, hidden: int = 256) -> SlotReader:
    """The reward's reader: an MLP per slot."""
    trunk = nn.Sequential(
        nn.Flatten(), nn.Linear(channels * patch * patch, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
    )
    return SlotReader(trunk, hidden, patch)


def cnn_slot_reader(channels: int, patch: int, features: int = 64) -> SlotReader:
    """The judge's reader: a small CNN per slot (another architecture than the reward's, so it does not share its
    blind spots); its features are the space of FID and diversity."""
    return SlotReader(cnn_trunk((channels, patch, patch), features), features, patch)
