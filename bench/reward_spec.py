"""What a run's reward spec (bench/names.py: reward_terms) names, before anything loads."""

from __future__ import annotations

from bench.names import canonical_reward, reward_terms
from rewards.base import Reward
from rewards.combined import Combination
from worlds import REWARDS


def reward_class(spec: str) -> type[Reward] | Combination:
    """One reward's class, or the Combination of several (rewards/combined.py): either checks a method against it
    (`differentiable`) and loads with `from_world`."""
    terms = reward_terms(spec, REWARDS)
    if len(terms) == 1 and terms[0][0] == 1:
        return REWARDS[terms[0][1]]
    return Combination(canonical_reward(spec, REWARDS), tuple((weight, name, REWARDS[name]) for weight, name in terms))
