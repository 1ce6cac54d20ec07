"""Named suites: a grid of methods x rewards x seeds, one budget (evaluated at milestones), and the
method settings. Each preset is a small function overriding the defaults, so a suite reads as its diff."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.evaluate import EvalConfig
from bench.meter import Budget
from methods import METHODS
from rewards import REWARDS


@dataclass(frozen=True)
class Suite:
    name: str
    methods: tuple[str, ...] = tuple(METHODS)
    rewards: tuple[str, ...] = ("digit", "compress")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = Budget("nfe", 300_000)
    milestones: tuple[float, ...] = (0.25, 0.5, 1.0)
    world: str = "digits"
    eval: EvalConfig = EvalConfig()
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    """method -> {config field: value}, applied over the method's Config defaults."""

    def method_config(self, method: str):
        return dataclasses.replace(METHODS[method].Config(), **self.overrides.get(method, {}))


def default() -> Suite:
    """Every method on both rewards of the digits world, 3 seeds, 300k NFE (milestones at 75k, 150k)."""
    return Suite("default")


def smoke() -> Suite:
    """A minutes-long pass over every method and reward on the tiny world, for tests and quick checks."""
    small = {"prompts_per_iter": 2, "samples_per_prompt": 4, "sample_steps": 4}
    return Suite(
        "smoke", seeds=(0, 1), budget=Budget("nfe", 400), milestones=(0.5, 1.0), world="digits-tiny",
        eval=EvalConfig(steps=4, samples_per_prompt=2),
        overrides={"raft": {**small, "updates_per_iter": 1}, "ddpo": {**small, "minibatch": 4}},
    )


SUITES = {"default": default, "smoke": smoke}


def check_names(kind: str, names, valid) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; valid: {', '.join(valid)}")
    return names


def validate(suite: Suite) -> Suite:
    """Fails fast, before any model loads, on anything a run would only discover later."""
    check_names("method", suite.methods, METHODS)
    check_names("reward", suite.rewards, REWARDS)
    for method, values in suite.overrides.items():
        check_names("method", [method], METHODS)
        fields = {f.name for f in dataclasses.fields(METHODS[method].Config)}
        check_names(f"{method} option", values, sorted(fields))
    for method in suite.methods:
        suite.method_config(method)
    if not suite.milestones or any(not 0 < m <= 1 for m in suite.milestones) or list(suite.milestones) != sorted(set(suite.milestones)):
        raise ValueError(f"milestones must be increasing fractions in (0, 1], got {suite.milestones}")
    if suite.eval.samples_per_prompt < 2:
        raise ValueError(f"eval samples_per_prompt must be >= 2 (diversity compares images of a prompt), got {suite.eval.samples_per_prompt}")
    runnable = [(m, r) for m in suite.methods for r in suite.rewards
                if METHODS[m].incompatibility(REWARDS[r], suite.budget.unit) is None]
    if not runnable:
        reasons = {f"{m}+{r}": METHODS[m].incompatibility(REWARDS[r], suite.budget.unit)
                   for m in suite.methods for r in suite.rewards}
        raise ValueError(f"no method/reward pair of this suite can run: {reasons}")
    return suite
