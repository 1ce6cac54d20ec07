"""The default suite, the leaderboard of the digits world, and its minutes-long twin `smoke` on the tiny world.

Its entries come from what each method declares (bench/experiments/suite.py: leaderboard_entries): every method on
the diffusion, consistency and flow models it is compared on, so ROCM, ORW-CFM-W2, the GRPO family, DiffusionNFT and
Adjoint Matching run on their own bases and the policy-gradient, ranking and direct-gradient methods on all three.
sft and pipeline, AIHF's baselines, are compared with it in the feedback suite. A method added to the registry joins
both suites.
"""

from __future__ import annotations

from bench.budget import Budget
from bench.evaluate import EvalConfig
from bench.experiments.suite import SAMPLER_VARIANTS, Suite, leaderboard_entries
from methods import METHODS

DIGITS_REWARDS = ("digit", "compress", "gold")


def default() -> Suite:
    """Every method on the digits world's three rewards, 3 seeds, 300k NFE (milestones at 75k, 150k): `digit`, where
    most methods saturate; `compress` and `gold`, the hackable ones (gold's ink term rewards bold strokes)."""
    return Suite("default", methods=leaderboard_entries("digits"), rewards=DIGITS_REWARDS, variants=SAMPLER_VARIANTS)


def smoke() -> Suite:
    """A minutes-long pass over every method, model and reward on the tiny world, for tests and quick checks: each
    method at the small config it declares (Trainer.small_config)."""
    return Suite(
        "smoke",
        methods=leaderboard_entries("digits-tiny"),
        rewards=DIGITS_REWARDS,
        variants=SAMPLER_VARIANTS,
        seeds=(0, 1),
        budget=Budget("nfe", 400),
        milestones=(0.5, 1.0),
        # a pass checks the plumbing in minutes: its milestones are a few steps each (sas's is 90 of its 200 NFE)
        budget_tolerance=0.5,
        world="digits-tiny",
        eval=EvalConfig(steps=4, samples_per_prompt=2),
        overrides=small_configs(),
    )


def small_configs() -> dict[str, dict[str, object]]:
    """Every method at the small config it declares (Trainer.small_config): what a smoke pass runs."""
    return {name: dict(method.small_config) for name, method in METHODS.items() if method.small_config}
