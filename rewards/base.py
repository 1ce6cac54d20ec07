"""The Reward protocol: a score per image, given its prompt."""

from __future__ import annotations

from typing import Protocol

import torch


class Reward(Protocol):
    """`__call__(images (B, C, H, W) in [0, 1], prompts) -> (B,) float32`.

    Never wraps itself in `no_grad`: a differentiable reward returns scores with a graph back to the
    images when they carry one, and the caller decides whether to build it.
    """

    name: str
    version: str
    differentiable: bool
    higher_is_better: bool

    @classmethod
    def from_world(cls, world) -> Reward:
        """The reward as `world` offers it (its weights, its device)."""
        ...

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...
