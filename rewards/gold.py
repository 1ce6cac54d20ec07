"""`gold`: the simulated annotator's hidden taste in the digits world (differentiable).

  g(x, c) = log p_judge(c | x) + INK_WEIGHT * ink(x),   ink(x) = mean pixel intensity in [0, 1],
the judge's confidence that the image shows the prompted digit plus a stroke property the annotator likes
(bold strokes), which no other signal of the world rewards. Methods that learn from feedback never read it:
they see only the annotator's preference labels and demonstrations (rewards/feedback.py). As an ordinary
reward it is an oracle: a method trained on it directly is the upper bound of learning it from feedback.
Since the judge is part of it, judge accuracy is no longer an independent check on runs trained on `gold`.
"""

from __future__ import annotations

import torch
from torch import nn

from models.digits import digit_of

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
