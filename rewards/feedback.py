"""Simulated human feedback: an annotator who holds a hidden reward and gives only labels and examples.

Methods that learn from feedback (Trainer.learns_from_feedback) receive a `Feedback` instead of the reward:
  preference labels  `prefer(a, b, prompts)`: for each pair, 1.0 if the annotator prefers image a, drawn from
                     Bradley-Terry, P(a > b) = sigmoid((g(a) - g(b)) / temperature), then flipped with
                     probability `label_noise`; every label is counted by the meter (budget unit `labels`);
  demonstrations     what an annotator would show as "like this", chosen by the hidden reward (`world.demonstrations`):
                     in the digits world held-out real images (its judge split, never seen by the generators), the
                     best `demonstration_fraction` of each digit, each with a train prompt naming its digit; at
                     scale, where no image set ships, the best of the base model's own samples of each train prompt.
The hidden reward g is the run's reward (the `gold` reward in the feedback suite); its scores never leave
this object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AnnotatorConfig:
    temperature: float = 0.3
    """Bradley-Terry temperature, in the hidden reward's units (smaller: more decisive labels)."""
    label_noise: float = 0.0
    """Probability that a label is flipped after it is drawn."""
    demonstration_fraction: float = 0.25
    """Share of each digit's held-out images, best first by the hidden reward, given as demonstrations."""

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"annotator temperature must be > 0, got {self.temperature}")
        if not 0 <= self.label_noise < 0.5:
            raise ValueError(f"annotator label_noise must be in [0, 0.5), got {self.label_noise}")
        if not 0 < self.demonstration_fraction <= 1:
            raise ValueError(f"annotator demonstration_fraction must be in (0, 1], got {self.demonstration_fraction}")


class Feedback:
    """The annotator as a method sees it: labels and demonstrations, never the hidden reward's values."""

    def __init__(
        self,
        reward,
        demonstrations: tuple[torch.Tensor, list[str]],
        meter,
        reward_model: type[nn.Module],
        config: AnnotatorConfig = AnnotatorConfig(),
    ):
        self._reward = reward
        self._meter = meter
        self.config = config
        self.demonstrations = demonstrations
        self.reward_model = reward_model
        """The learned reward's architecture for this world's images and prompts (World.learned_reward_model), a
        module class taking the image shape."""

    @classmethod
    def from_world(cls, world, reward, meter, base_policy, config: AnnotatorConfig = AnnotatorConfig()) -> Feedback:
        """The annotator of `world` holding `reward`; `base_policy` is the run's untrained model (the scale worlds
        draw demonstrations from it)."""
        demos = world.demonstrations(reward, config.demonstration_fraction, base_policy)
        return cls(reward, demos, meter, world.learned_reward_model, config)

    def prefer(
        self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: list[str], generator: torch.Generator
    ) -> torch.Tensor:
        """(B,) float labels: 1.0 where the annotator prefers images_a[i] to images_b[i] for prompts[i]."""
        if not len(images_a) == len(images_b) == len(prompts):
            raise ValueError(
                f"prefer needs as many prompts as pairs, got {len(images_a)}, {len(images_b)}, {len(prompts)}"
            )
        with torch.no_grad():
            margin = (self._reward(images_a, prompts) - self._reward(images_b, prompts)).float().cpu()
        labels = (
            torch.rand(len(prompts), generator=generator) < torch.sigmoid(margin / self.config.temperature)
        ).float()
        flips = torch.rand(len(prompts), generator=generator) < self.config.label_noise
        self._meter.count_labels(len(prompts))
        return torch.where(flips, 1 - labels, labels)
