"""The plateau: the four best tuned methods on the compositional world's flow model, and best-of-N, run to ten times
the leaderboard's budget; study `plateau`, the compute each needs to reach best-of-N's score at the leaderboard's
budget, and whether any trained method ends above best-of-N at equal compute.

The leaderboard compares methods at 300k NFE, where best-of-N wins by far (results/scenes/). A method still climbing
there might pass it with more compute; one that has plateaued will not. So the tuned configs of the four trained
methods that score best after tuning (results/scenes/tuning.md, `geneval` on `scene-flow`) run 3M NFE on 3 seeds,
evaluated on a log scale of compute (1-2-5 steps from 30k), beside best-of-N at the same milestones: at a milestone of
B NFE, best-of-N draws floor(B / c) candidates per prompt (methods/best_of_n.py), so its curve is the inference-time
scaling curve at equal compute. The study reads, per method, its judge score along the log scale, the NFE its mean
curve needs to reach best-of-N's mean at 300k (bench/experiments/tables.py: efficiency), and its difference to
best-of-N at each milestone, with intervals that resample each side's seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.budget import Budget
from bench.experiments.scenes_leaderboard import scenes, tuned_options
from bench.experiments.suite import TUNED, Suite
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, cell_of, ci, efficiency
from bench.formats import human
from bench.stats import stratified_bootstrap_ci
from models.io import atomic_write_bytes

MODEL = "scene-flow"
REWARD = "geneval"
PLATEAU_METHODS = ("dgpo", "awm", "elbo", "gdpo")
"""The four trained methods with the best tuned judge score on `geneval`, `scene-flow` (results/scenes/tuning.md;
tests/test_plateau.py checks the committed store still ranks them first)."""
SCALE = 10
"""The plateau's budget in leaderboard budgets."""
BASE, BEST_OF_N = f"base@{MODEL}", f"best_of_n@{MODEL}"


def scenes_plateau() -> Suite:
    """The PLATEAU_METHODS at their tuned options (the scenes suite's tuned.json) and best-of-N, on `geneval`,
    `scene-flow`, at SCALE times the scenes leaderboard's budget, 3 seeds, milestones 1-2-5 on a log scale."""
    leaderboard = scenes()
    return Suite(
        "scenes-plateau",
        methods=(BASE, *(f"{method}/{TUNED}@{MODEL}" for method in PLATEAU_METHODS), BEST_OF_N),
        rewards=(REWARD,),
        world=leaderboard.world,
        budget=Budget(leaderboard.budget.unit, SCALE * leaderboard.budget.amount),
        # the leaderboard's budget is the milestone at 1/SCALE, where best-of-N's score is the target
        milestones=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
        # best-of-N's default cap (64 candidates a prompt) is what the leaderboard's budget buys; lifted above what
        # this budget buys (669), so that it spends the budget as the trained methods do
        overrides={"best_of_n": {"max_candidates": 1024}},
        tuned={
            key: options
            for key, options in tuned_options(leaderboard.name).items()
            if key in {f"{method}@{MODEL}/{REWARD}" for method in PLATEAU_METHODS}
        },
        studies=(write_plateau,),
    )


def write_plateau(results: pd.DataFrame, out: Path) -> Path:
    """plateau.md: the judge score of every entry at each milestone; per trained method the NFE to reach best-of-N's
    score at the leaderboard's budget, and its difference to best-of-N at equal compute."""
    ours = results.loc[(results["reward"] == REWARD) & (results["split"] == PRIMARY_SPLIT)]
    judge = ours.loc[ours["metric"] == "judge_score"]
    budgets = sorted(judge.loc[judge["label"] != BASE, "budget"].unique())
    if not budgets:
        return _write(out, ["# The plateau", "", "No runs but the base's yet."])
    # the leaderboard's budget: the milestone at 1/SCALE of the plateau's (as the store wrote it, to its last bit)
    target_budget = next((b for b in budgets if math.isclose(b, budgets[-1] / SCALE)), budgets[-1] / SCALE)
    lines = [
        "# The plateau: trained methods against best-of-N at up to ten times the budget",
        "",
        f"`judge_score` on `{PRIMARY_SPLIT}`, reward `{REWARD}`, model `{MODEL}`, mean [95% bootstrap CI] over seeds, "
        "at each milestone of the budget (NFE: training for a trained method, inference for best-of-N, which at a "
        "milestone of B NFE draws as many candidates a prompt as B buys). Trained methods run their tuned options "
        "(results/scenes/tuned.json).",
        "",
        "| entry | seeds | " + " | ".join(human(b) for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    labels = [BEST_OF_N, *(f"{m}/{TUNED}@{MODEL}" for m in PLATEAU_METHODS)]
    present = [label for label in labels if not cell_of(judge, label).empty]
    for label in present:
        cell = cell_of(judge, label)
        by_budget = [by_seed(cell.loc[cell["budget"] == b], PRIMARY_SPLIT, "judge_score").to_numpy() for b in budgets]
        scores = [ci(values) if values.size else "—" for values in by_budget]
        lines.append(f"| {label} | {cell['seed'].nunique()} | " + " | ".join(scores) + " |")
    reference = cell_of(judge, BEST_OF_N)
    if reference.empty or target_budget not in budgets:
        return _write(out, [*lines, "", f"No {BEST_OF_N} runs at {human(target_budget)} NFE yet: no target."])
    target = by_seed(reference.loc[reference["budget"] == target_budget], PRIMARY_SPLIT, "judge_score").to_numpy()
    lines += [
        "",
        f"Target: {BEST_OF_N}'s score at {human(target_budget)} NFE (the leaderboard's budget), {ci(target)}. "
        "`NFE to the target`: where the method's mean curve (from the base's score at 0) first reaches the target's "
        "mean, linearly interpolated, with an interval that resamples each side's seeds (`never`: not within the "
        "budget). `minus best-of-N`: the method's score less best-of-N's at the same milestone, at the last one and "
        "at the best one; `above best-of-N at`: the milestones where that difference's interval lies above 0.",
        "",
        "| method | seeds | NFE to the target | minus best-of-N at the end | best minus best-of-N (at) | "
        "above best-of-N at |",
        "|---|---|---|---|---|---|",
    ]
    for label in present[1:]:
        study = efficiency(
            results, label, BEST_OF_N, BASE, REWARD, "nfe", metric="judge_score", reference_budget=target_budget
        )
        if study is None:
            continue
        reach = _reach(study["fraction"], study["reference_queries"])
        cell = cell_of(judge, label)
        differences = {b: _difference(cell, reference, b) for b in budgets}
        at = [b for b in budgets if not math.isnan(differences[b][0])]
        if not at:
            continue
        best = max(at, key=lambda b: differences[b][0])
        above = [human(b) for b in at if differences[b][1] > 0]
        lines.append(
            f"| {label} | {cell['seed'].nunique()} | {reach} | "
            f"{ci(differences[budgets[-1]])} | {ci(differences[best])} ({human(best)}) | "
            f"{', '.join(above) or 'none'} |"
        )
    return _write(out, lines)


def _difference(cell: pd.DataFrame, reference: pd.DataFrame, budget: float) -> tuple[float, float, float]:
    """The cell's mean judge score less the reference's at the milestone of `budget`, each side's seeds resampled on
    their own; NaNs where either has no run there."""
    ours, theirs = (
        by_seed(frame.loc[frame["budget"] == budget], PRIMARY_SPLIT, "judge_score").to_numpy()
        for frame in (cell, reference)
    )
    if not ours.size or not theirs.size:
        return math.nan, math.nan, math.nan
    return stratified_bootstrap_ci([ours, theirs], lambda a, b, axis=-1: a.mean(axis) - b.mean(axis))


def _reach(fraction: tuple[float, float, float], reference_nfe: float) -> str:
    """NFE to the target, mean [interval], from its fraction of the reference's compute."""
    values = [human(f * reference_nfe) if np.isfinite(f) else "never" for f in fraction]
    return values[0] if values[1] == values[2] == values[0] else f"{values[0]} [{values[1]}, {values[2]}]"


def _write(out: Path, lines: list[str]) -> Path:
    path = out / "plateau.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
