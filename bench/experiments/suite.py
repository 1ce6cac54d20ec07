"""What a suite is: a grid of methods x rewards x seeds, one budget (evaluated at milestones), and the method
settings, checked before any model loads. A method entry is `method[/variant][@model]`: `@model` picks the world's
generator to fine-tune (default: the method's first supported family), and `/variant` names one of the suite's
`variants`, a labelled set of options, so one suite can compare configs of the same method, or `tuned`, the options
a tune chose for that cell (bench/tune.py). The suites themselves, each with the study tables it writes, are the modules
beside this one."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.budget import Budget
from bench.evaluate import EvalConfig
from bench.names import canonical_reward, check_entry, check_names, reward_terms
from bench.reward_spec import reward_class
from methods import METHODS
from models.io import atomic_write_bytes
from worlds import MODEL_FAMILIES, REWARDS, world_entry

if TYPE_CHECKING:
    import pandas as pd

TUNED = "tuned"
"""The variant whose options are the tuned ones of its (method, model, reward) cell (Suite.tuned)."""
TEN_MILESTONES = tuple(round(0.1 * k, 1) for k in range(1, 11))
"""Milestones every tenth of the budget: a study's curves over compute."""
Study = Callable[["pd.DataFrame", Path], Path]
"""A table written beside the leaderboard: (the suite's results, each row labelled method[/variant]@model as its
entry; the folder) -> the file written."""


@dataclass(frozen=True)
class Suite:
    name: str
    methods: tuple[str, ...] = tuple(METHODS)
    """Entries `method[/variant][@model]`."""
    rewards: tuple[str, ...] = ("digit", "compress")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = Budget("nfe", 300_000)
    milestones: tuple[float, ...] = (0.25, 0.5, 1.0)
    budget_tolerance: float = 0.1
    """How far past a milestone a run may train, as a fraction of it: a run stops at the first step that reaches the
    milestone, so it passes it by less than one step; `validate` refuses a budget whose first milestone a method's
    step could pass by more."""
    world: str = "digits"
    eval: EvalConfig = EvalConfig()
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """method -> {config field: value}, applied over the method's Config defaults."""
    variants: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """`method/variant` -> {config field: value}, applied over the overrides for entries naming it."""
    studies: tuple[Study, ...] = ()
    """Tables written beside the leaderboard, each answering one question from the store (bench/experiments/)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Model -> a checkpoint of one's own in its place (`bench run --source MODEL=SOURCE`), in worlds that take one."""
    sharding: str = ""
    """'fsdp2': every run a full fine-tune sharded over the processes (`bench run --sharding fsdp2`, bench/parallel.py),
    in worlds that shard; '' unsharded."""
    reward_servers: dict[str, str] = field(default_factory=dict)
    """Reward -> the address of a server that scores it (`bench run --reward-server NAME=URL`, rewards/server.py)."""
    tuning_budget: float = 8.0
    """What a tune of one (method, model, reward) cell spends, in run budgets: every trial's use, pruned trials
    included (bench/tune.py); the same for every cell."""
    tuned: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """`method@model/reward` -> the options a tune chose there (tuned.json beside the store), for `method/tuned`."""
    results: str = ""
    """The suite whose results folder (and store) this one writes into ('' its own): a suite of further runs of
    another's cells, such as its tuned configs, shares its leaderboard."""

    def method_config(self, method: str, variant: str = "", model: str = "", reward: str = ""):
        """A method entry's config: the method's defaults, the suite's overrides, then the variant's options (the
        tuned ones of the (method, model, reward) cell for `tuned`)."""
        if variant == TUNED:
            key = f"{method}@{model}/{reward}"
            if key not in self.tuned:
                raise ValueError(
                    f"no tuned options for {key} in suite {self.name!r}; tune it first: "
                    f"python -m bench tune --suite {self.results or self.name} --method {method}@{model} "
                    f"--reward {reward}"
                )
            options = {**self.overrides.get(method, {}), **self.tuned[key]}
        else:
            options = {**self.overrides.get(method, {}), **(self.variants[f"{method}/{variant}"] if variant else {})}
        return dataclasses.replace(METHODS[method].Config(), **options)

    def entries(self) -> list[tuple[str, str, str]]:
        """(method, variant, model) of every method entry."""
        return [parse_entry(entry, self.variants, self.world) for entry in self.methods]


def tuned_file(results: Path) -> Path:
    """The tuned options of the cells of the store in folder `results` (written by bench/tune.py)."""
    return results / "tuned.json"


def read_tuned(path: Path) -> dict[str, dict[str, object]]:
    """cell key -> its tuned options, from tuned.json (JSON: reading it runs no code); {} where there is none."""
    if not path.is_file():
        return {}
    try:
        cells = json.loads(path.read_text())
        return {key: dict(cell["options"]) for key, cell in cells.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not readable as tuned options ({type(error).__name__}: {error})") from None


def write_tuned(path: Path, cells: dict[str, dict]) -> None:
    """tuned.json: each tuned cell's summary (bench/tune.py: cell_summary), in key order; read_tuned reads it."""
    text = json.dumps({key: cells[key] for key in sorted(cells)}, indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def first_models(world: str) -> dict[str, str]:
    """Family -> the world's first generator of it, families in the world's order."""
    firsts: dict[str, str] = {}
    for model, family in world_entry(world).models.items():
        firsts.setdefault(family, model)
    return firsts


def default_model(method: str, world: str = "digits") -> str:
    """The world's first generator of the first of the method's families the world has."""
    firsts, families = first_models(world), METHODS[method].families
    family = next((f for f in families if f in firsts), None)
    if family is None:
        raise ValueError(f"{method} fine-tunes {', '.join(families)} models; world {world!r} has none")
    return firsts[family]


def parse_entry(
    entry: str, variants: Mapping[str, Mapping] | None = None, world: str | None = None
) -> tuple[str, str, str]:
    """`method[/variant][@model]` -> (method, variant, model), validated against the registries, the suite's
    variants and its world's generators (None: any variant name and any world's model are accepted, for checks
    made before the suite is known)."""
    name, _, model = entry.partition("@")
    method, _, variant = name.partition("/")
    models = MODEL_FAMILIES if world is None else world_entry(world).models
    check_entry(entry, {m: cls.families for m, cls in METHODS.items()}, models)
    if variant and variant != TUNED and variants is not None and name not in variants:
        valid = [v for v in variants if v.startswith(f"{method}/")]
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(valid) or 'none in this suite'}")
    return method, variant, model or default_model(method, world or "digits")


SAMPLER_VARIANTS: dict[str, dict[str, object]] = {"flow_grpo/cps": {"dynamics": "cps"}}
"""Variants every leaderboard suite runs beside their method, on each model it runs it on: a sampler's dynamics that is
not a method of its own (CPS, coefficients-preserving sampling, on Flow-GRPO's chains: methods/flow_grpo.py)."""


def leaderboard_entries(world: str, every_method: bool = False) -> tuple[str, ...]:
    """A leaderboard suite's entries, from what each method declares (Trainer.families, .compared_on): every method on
    the world's first model of each family it is compared on, family by family in the world's order, each followed by
    its SAMPLER_VARIANTS there. `every_method`: a method compared on none of the world's families joins on the first
    of its families the world has, so that every method the world can run is on its leaderboard."""
    first_model = first_models(world)
    entries = [
        f"{name}@{model}"
        for family, model in first_model.items()
        for name, method in METHODS.items()
        if family in (method.families if method.compared_on is None else method.compared_on)
    ]
    if every_method:
        placed = {entry.partition("@")[0] for entry in entries}
        for name, method in METHODS.items():
            if name not in placed and any(f in first_model for f in method.families):
                entries.append(f"{name}@{default_model(name, world)}")
    variants = [
        f"{variant}@{model}"
        for entry in entries
        for variant in SAMPLER_VARIANTS
        for name, _, model in [entry.partition("@")]
        if variant.partition("/")[0] == name
    ]
    return (*entries, *variants)


MIN_WALL_MILESTONE_S = 1.0
"""The shortest wall-clock milestone: under a second, a milestone measures start-up and the clock's jitter, not
training, and no method's step on any world fits in it."""


def check_budget(suite: Suite, seconds_per_nfe: Mapping[tuple[str, str], float] | None = None) -> None:
    """Refuses a budget whose first milestone one of the suite's training methods could pass by more than the suite's
    tolerance, naming the smallest budget that keeps every milestone within it. The step that reaches a milestone
    passes it by less than its own cost: the first step's (with its one-off work) when that step alone reaches the
    milestone, a later step's otherwise (Trainer.step_usage, .iteration_usage). Later milestones are larger, so
    the first is the one at risk. A step's wall seconds are its NFE at `seconds_per_nfe` of its (method, model), the
    store's own timings (Store.seconds_per_nfe); an entry the store has not timed is not judged."""
    unit, fraction, tolerance = suite.budget.unit, suite.milestones[0], suite.budget_tolerance
    first = suite.budget.amount * fraction
    if unit == "wall_s" and first < MIN_WALL_MILESTONE_S:
        # judged whatever the store has timed: no step of any method fits in less
        raise ValueError(
            f"budget {suite.budget} puts its first milestone at {first:g} s (at {fraction:g} of the budget), less than "
            f"the {MIN_WALL_MILESTONE_S:g} s a wall-clock milestone needs to hold a step; the smallest budget is "
            f"wall_s:{_round_up(MIN_WALL_MILESTONE_S / fraction)}"
        )
    world = world_entry(suite.world)
    too_small = {}  # entry -> (what a step could pass the first milestone by, the smallest budget that fits)
    for method, variant, model in suite.entries():
        if not METHODS[method].trains:
            continue
        generator = world.generator_class(model)
        configs = [suite.method_config(method, variant, model, reward) for reward in suite.rewards]
        rate = (seconds_per_nfe or {}).get((method, model), 0.0)  # 0: not timed, not judged under wall_s
        first_step = max(_step_cost(METHODS[method].step_usage(config, generator), unit, rate) for config in configs)
        later_step = max(
            _step_cost(METHODS[method].iteration_usage(config, generator), unit, rate) for config in configs
        )
        past = max(first_step - first, later_step)
        if past > tolerance * first:
            # the smallest first milestone m with max(first_step - m, later_step) <= tolerance * m, as a budget
            smallest = max(later_step / tolerance, first_step / (1 + tolerance)) / fraction
            too_small[f"{method}/{variant}@{model}" if variant else f"{method}@{model}"] = (past, smallest)
    if too_small:
        entry, (past, smallest) = max(too_small.items(), key=lambda item: item[1][1])
        others = f" (and {len(too_small) - 1} more of its entries)" if len(too_small) > 1 else ""
        cost = f"{past:.3g}" if unit == "wall_s" else f"{past:g}"  # measured seconds: 3 digits say enough
        raise ValueError(
            f"budget {suite.budget} is too small for {entry}{others}: a step costs up to {cost} {unit}"
            + (" by the store's own timings" if unit == "wall_s" else "")
            + ", more than "
            f"{tolerance:.0%} of the first milestone ({first:g}, at {fraction:g} of the budget); the smallest budget "
            f"that keeps every milestone within {tolerance:.0%} is {unit}:{_round_up(smallest)} (or allow more: "
            "--budget-tolerance)"
        )


def _step_cost(usage: dict[str, float], unit: str, seconds_per_nfe: float) -> float:
    """A step's cost in the budget's unit: its wall seconds are its NFE at the store's measured rate."""
    return usage.get("nfe", 0.0) * seconds_per_nfe if unit == "wall_s" else usage.get(unit, 0.0)


def _round_up(amount: float) -> str:
    """`amount` rounded up to two significant digits, written as a budget: 492,800 -> 500k."""
    scale = 10 ** max(math.floor(math.log10(amount)) - 1, 0)
    rounded = math.ceil(amount / scale) * scale
    if rounded >= 1_000_000:
        return f"{rounded / 1_000_000:g}M"
    return f"{rounded / 1_000:g}k" if rounded >= 1_000 else f"{rounded:g}"


def validate(suite: Suite, seconds_per_nfe: Mapping[tuple[str, str], float] | None = None) -> Suite:
    """Fails fast, before any model loads, on anything a run would only discover later (a wall-clock budget against
    the store's own timings, `seconds_per_nfe`, where given)."""
    if not suite.methods:
        raise ValueError(
            "a suite needs at least one method"
            + (
                f"; suite {suite.name!r} runs the tuned cells of results/{suite.results}/: tune some first "
                f"(make tune SUITE={suite.results})"
                if suite.results
                else ""
            )
        )
    entries = suite.entries()
    offered = world_entry(suite.world).rewards
    if not suite.rewards:
        raise ValueError(f"a suite needs at least one reward; world {suite.world!r} offers: {', '.join(offered)}")
    for spec in suite.rewards:
        spelt = canonical_reward(spec, REWARDS)
        if spec != spelt:
            raise ValueError(f"reward spec {spec!r} is spelt {spelt!r} (run ids name it)")
    named = dict.fromkeys(name for spec in suite.rewards for _, name in reward_terms(spec, REWARDS))
    missing = [r for r in named if r not in offered]
    if missing:
        raise ValueError(
            f"world {suite.world!r} offers no {', '.join(map(repr, missing))} reward; valid: {', '.join(offered)}"
        )
    named = {**suite.overrides, **{name.partition("/")[0]: values for name, values in suite.variants.items()}}
    for method, values in named.items():
        check_names("method", [method], METHODS)
        fields = {f.name for f in dataclasses.fields(METHODS[method].Config)}
        check_names(f"{method} option", values, sorted(fields))
    for method, variant, model in entries:
        for reward in suite.rewards:
            suite.method_config(method, variant, model, reward)
    if (
        not suite.milestones
        or any(not 0 < m <= 1 for m in suite.milestones)
        or list(suite.milestones) != sorted(set(suite.milestones))
    ):
        raise ValueError(f"milestones must be increasing fractions in (0, 1], got {suite.milestones}")
    served = [name for name in suite.reward_servers if name not in suite.rewards]
    if served:
        raise ValueError(
            f"--reward-server names {', '.join(map(repr, served))}, which the suite does not run; its rewards: "
            f"{', '.join(suite.rewards)}"
        )
    check_budget(suite, seconds_per_nfe)
    if suite.eval.samples_per_prompt < 2:
        raise ValueError(
            "eval samples_per_prompt must be >= 2 (diversity compares images of a prompt), "
            f"got {suite.eval.samples_per_prompt}"
        )
    runnable = [
        (m, r)
        for m, _, _ in entries
        for r in suite.rewards
        if METHODS[m].incompatibility(reward_class(r), suite.budget.unit) is None
    ]
    if not runnable:
        reasons = {
            f"{m}+{r}": METHODS[m].incompatibility(reward_class(r), suite.budget.unit)
            for m, _, _ in entries
            for r in suite.rewards
        }
        raise ValueError(f"no method/reward pair of this suite can run: {reasons}")
    return suite
