"""The one way a trainer is made: the run loop (bench/runner.py), the throughput benchmarks (bench/throughput/) and the
tests all call `build_trainer`, so every trainer sees its policy and reward through the harness's meter."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from bench.meter import Meter, MeteredPolicy, MeteredReward
from methods import METHODS
from methods.trainer import Trainer
from models.policy import Policy
from rewards.feedback import Feedback


def build_trainer(
    method: str,
    policy: Policy,
    reward,
    prompts: list[str],
    config,
    seed: int,
    meter: Meter,
    annotator: Callable[[Meter], Feedback] | None = None,
) -> Trainer:
    """`method`'s Trainer under `config` and `seed`, training on `prompts`, over `policy` and `reward` as `meter`
    counts them: the harness, not the method, counts network evaluations, samples and reward queries.

    A method that learns from feedback gets `annotator(meter)` (the annotator holding `reward`, which hides the
    reward's values: rewards/feedback.py) in place of the reward; it cannot be built without one."""
    cls = METHODS[method]
    if cls.learns_from_feedback:
        if annotator is None:
            raise ValueError(f"{method} learns from an annotator's feedback: build it with the annotator of its world")
        signal = annotator(meter)
    else:
        signal = MeteredReward(reward, meter)
    # the metered policy forwards every attribute it does not count to the policy: it is one, as a proxy
    return cls(cast(Policy, MeteredPolicy(policy, meter)), signal, list(prompts), config, seed)
