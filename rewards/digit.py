"""`digit`: log-probability of the prompted digit under the world's reward classifier (differentiable).

This is the proxy reward methods optimise. The classifier was trained on the train split only; the
judge that scores the leaderboard is a different network trained on data this one never saw, so a
method that fools this classifier without drawing better digits gains reward but not judge accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from models.digits import digit_of


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
