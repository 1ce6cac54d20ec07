"""A run's reward made of several: a reward spec `R1+w2*R2+...` (bench/names.py: reward_terms) names rewards with
positive weights, and the run trains on their weighted sum R = sum_k w_k R_k. A method that combines the rewards its
own way (GDPO normalizes each within the group first) reads the terms from `components`; evaluation records each
term beside the sum (bench/evaluate.py), so the tables read every component as well as the judge.

One reward query is one image scored by the whole spec, whatever its number of terms: the spec is the run's reward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rewards.base import Reward


class CombinedReward:
    """The weighted sum of loaded rewards, by the spec's names: a Reward named by its spec, and its terms one by one."""

    higher_is_better = True

    def __init__(self, name: str, terms: Mapping[str, tuple[float, Reward]]):
        self.name = name
        self.terms = dict(terms)
        self.weights = {term: weight for term, (weight, _) in self.terms.items()}
        self.version = "+".join(f"{name}:{reward.version}" for name, (_, reward) in self.terms.items())
        self.differentiable = all(reward.differentiable for _, reward in self.terms.values())

    def components(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Each term's (B,) scores, unweighted, by its name."""
        return {name: reward(images, prompts) for name, (_, reward) in self.terms.items()}

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """sum_k w_k R_k of the terms' scores."""
        return torch.stack([self.weights[name] * components[name] for name in self.weights]).sum(dim=0)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.combine(self.components(images, prompts))


@dataclass(frozen=True)
class Combination:
    """A combined reward before it loads, as a reward class is for one reward: what a suite checks a method against
    (`differentiable`), and `from_world` to load it."""

    name: str
    """The spec, spelt as run ids name it (bench/names.py: canonical_reward)."""
    terms: tuple[tuple[float, str, type[Reward]], ...]
    higher_is_better = True

    @property
    def differentiable(self) -> bool:
        return all(cls.differentiable for _, _, cls in self.terms)

    def from_world(self, world) -> CombinedReward:
        return CombinedReward(self.name, {name: (weight, cls.from_world(world)) for weight, name, cls in self.terms})


def reward_weights(reward) -> dict[str, float]:
    """A reward's terms and their weights: a combined reward's, or {its name: 1} for one reward."""
    return dict(getattr(reward, "weights", None) or {reward.name: 1.0})


def reward_components(reward, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Each term's scores of a reward: a combined reward's (its `components`), or {its name: its scores} for one."""
    terms = getattr(reward, "components", None)
    return terms(images, prompts) if terms else {reward.name: reward(images, prompts)}
