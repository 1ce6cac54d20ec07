"""Gathering preference labels and fitting a reward model to them: shared by the methods that learn from feedback.

Preferences are collected once, at the start of a run, on pairs of the base model's samples for the same train
prompt, as a labelled dataset would be (the budget is the number of pairs). They are drawn from a generator
seeded by the run's seed alone, so every method of one seed is labelled on the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.trainer import prompt_groups
from rewards.learned import bradley_terry_loss

PREFERENCE_SEED_OFFSET = 7919
"""Offsets the preference generator's seed from the trainer's, so the pairs do not reuse the training noise."""


@dataclass
class Preferences:
    """P labelled pairs: images (P, C, H, W) in [0, 1], their prompt, and 1.0 where a was preferred."""

    images_a: torch.Tensor
    images_b: torch.Tensor
    prompts: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(
        self, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        index = torch.randint(0, len(self), (size,), generator=generator)
        return self.images_a[index], self.images_b[index], [self.prompts[i] for i in index.tolist()], self.labels[index]


def collect_preferences(policy, feedback, prompts: list[str], pairs: int, steps: int, seed: int) -> Preferences:
    """`pairs` pairs of the policy's samples for train prompts, labelled by the annotator (counted as labels)."""
    generator = torch.Generator().manual_seed(seed + PREFERENCE_SEED_OFFSET)
    chosen = prompt_groups(prompts, pairs, 1, generator)
    with torch.no_grad():
        images_a = policy.sample(chosen, steps, generator).images.cpu()
        images_b = policy.sample(chosen, steps, generator).images.cpu()
    return Preferences(images_a, images_b, chosen, feedback.prefer(images_a, images_b, chosen, generator))


def preference_accuracy(model: torch.nn.Module, preferences: Preferences) -> float:
    """Fraction of the labels the model's scores agree with."""
    with torch.no_grad():
        margin = model(preferences.images_a, preferences.prompts) - model(preferences.images_b, preferences.prompts)
    return float(((margin > 0).float().cpu() == preferences.labels).float().mean())


def fit_bradley_terry(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    preferences: Preferences,
    steps: int,
    batch: int,
    generator: torch.Generator,
) -> float:
    """`steps` minibatch steps on the Bradley-Terry loss; returns the last loss."""
    for _ in range(steps):
        a, b, prompts, labels = preferences.batch(batch, generator)
        loss = bradley_terry_loss(model(a, prompts), model(b, prompts), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def new_reward_model(feedback, policy, seed: int) -> torch.nn.Module:
    """A freshly initialised reward model of the architecture the annotator's world calls for (rewards.learned), on
    the policy's device; the same for a seed whatever ran before."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + PREFERENCE_SEED_OFFSET)
        model = feedback.reward_model(policy.image_shape)
    return model.to(policy.device)
