"""Scores across rewards (the suite's tasks), as rliable aggregates scores across games.

- aggregate.csv: per ranked entry (a method) and milestone budget, the training reward normalized per
  task, 0 = the `base` method's mean and 1 = the best cell mean observed on that task (any method, any
  budget), then pooled over tasks and seeds: mean and IQM, each with a stratified bootstrap 95% interval
  (seeds resampled within their task). Normalizing is what lets rewards of different scales (a
  log-probability, minus a byte count) be averaged; a task where no cell beats base cannot be
  normalized and is left out, with a note.
- improvement.csv: for every ordered pair of entries at each budget unit's largest budget, the
  probability that a run of A beats a run of B on a task drawn at random (rliable's probability of
  improvement), with its stratified bootstrap interval, for the world's headline metric (the judge's
  accuracy in digits) and the training reward on the primary split. Only tasks both entries ran count; `tasks`
  names them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from bench.standings import BASE_METHOD, CELL_KEYS, TRAINING_REWARD
from bench.stats import iqm, pooled, probability_of_improvement, stratified_bootstrap_ci
from models.io import atomic_write_bytes

TASK_KEY = "reward"
# What a leaderboard ranks (a method): a cell without its task and budget.
ENTRY_KEYS = [k for k in CELL_KEYS if k not in (TASK_KEY, "budget_unit", "budget")]
# Scores are normalized within a task and budget unit, against the base of the same entry keys but method.
NORMALIZE_KEYS = [k for k in CELL_KEYS if k not in ("method", "budget")]
AGGREGATE_METRIC = TRAINING_REWARD


def entry_label(entry: tuple) -> str:
    """An entry's values (ENTRY_KEYS order) as the suites spell it: method@model."""
    return "@".join(map(str, entry))


def normalized_scores(results: pd.DataFrame, split: str) -> tuple[pd.DataFrame, list[str]]:
    """The AGGREGATE_METRIC rows of `split` with a `score` column (0 = base, 1 = best observed), and
    one note per task left out because it cannot be normalized."""
    rows = results[(results["split"] == split) & (results["metric"] == AGGREGATE_METRIC)]
    kept, notes = [], []
    for group, task in rows.groupby(NORMALIZE_KEYS):
        where = ", ".join(map(str, group))
        base = task.loc[task["method"] == BASE_METHOD, "value"]
        if base.empty:
            notes.append(f"{where}: no {BASE_METHOD} run to normalize against")
            continue
        cell_means = task.groupby(CELL_KEYS)["value"].mean()
        best = cell_means.max() if task["higher_is_better"].iloc[0] else cell_means.min()
        if best == base.mean():
            notes.append(f"{where}: no cell beats {BASE_METHOD}")
            continue
        kept.append(task.assign(score=(task["value"] - base.mean()) / (best - base.mean())))
    scores = pd.concat(kept) if kept else rows.iloc[:0].assign(score=pd.Series(dtype=float))
    return scores, notes


def aggregate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per entry and budget: pooled mean and IQM of the normalized scores, with intervals."""
    rows = []
    for key, entry in scores.groupby([*ENTRY_KEYS, "budget_unit", "budget"]):
        per_task = [task["score"].to_numpy() for _, task in entry.groupby(TASK_KEY)]
        row = dict(zip([*ENTRY_KEYS, "budget_unit", "budget"], key))
        row["tasks"] = ", ".join(sorted(entry[TASK_KEY].unique()))
        row["n_runs"] = len(entry)
        row["mean"], row["mean_lo"], row["mean_hi"] = stratified_bootstrap_ci(per_task, pooled(np.mean))
        row["iqm"], row["iqm_lo"], row["iqm_hi"] = stratified_bootstrap_ci(per_task, pooled(iqm))
        rows.append(row)
    columns = [
        *ENTRY_KEYS,
        "budget_unit",
        "budget",
        "tasks",
        "n_runs",
        "mean",
        "mean_lo",
        "mean_hi",
        "iqm",
        "iqm_lo",
        "iqm_hi",
    ]
    return pd.DataFrame(rows, columns=columns)


def improvement_table(results: pd.DataFrame, split: str, headline: str) -> pd.DataFrame:
    """One row per (metric, budget unit, entry A, entry B): P(A beats B) at that unit's largest budget, for the headline
    metric and the reward."""
    rows = []
    ours = results[(results["split"] == split) & results["metric"].isin((headline, TRAINING_REWARD))]
    for (metric, unit), frame in ours.groupby(["metric", "budget_unit"]):
        final = frame[frame["budget"] == frame["budget"].max()]
        sign = 1.0 if final["higher_is_better"].iloc[0] else -1.0  # P(improvement) reads higher as better
        per_entry = {
            entry: {task: sign * values["value"].to_numpy() for task, values in runs.groupby(TASK_KEY)}
            for entry, runs in final.groupby(ENTRY_KEYS)
        }
        for a, b in itertools.permutations(sorted(per_entry), 2):
            tasks = sorted(set(per_entry[a]) & set(per_entry[b]))
            if not tasks:
                continue
            p, lo, hi = probability_of_improvement([per_entry[a][t] for t in tasks], [per_entry[b][t] for t in tasks])
            rows.append(
                {
                    "metric": metric,
                    "budget_unit": unit,
                    "budget": final["budget"].iloc[0],
                    **{f"{k}_a": v for k, v in zip(ENTRY_KEYS, a)},
                    **{f"{k}_b": v for k, v in zip(ENTRY_KEYS, b)},
                    "tasks": ", ".join(tasks),
                    "p": p,
                    "lo": lo,
                    "hi": hi,
                }
            )
    columns = [
        "metric",
        "budget_unit",
        "budget",
        *(f"{k}_a" for k in ENTRY_KEYS),
        *(f"{k}_b" for k in ENTRY_KEYS),
        "tasks",
        "p",
        "lo",
        "hi",
    ]
    return pd.DataFrame(rows, columns=columns)


def write_aggregates(
    results: pd.DataFrame, out_dir: Path, primary_split: str, headline: str
) -> tuple[list[Path], list[str]]:
    """Write aggregate.csv and improvement.csv; return their paths and the normalization notes."""
    scores, notes = normalized_scores(results, primary_split)
    paths = [Path(out_dir) / "aggregate.csv", Path(out_dir) / "improvement.csv"]
    atomic_write_bytes(paths[0], aggregate_table(scores).to_csv(index=False).encode())
    atomic_write_bytes(paths[1], improvement_table(results, primary_split, headline).to_csv(index=False).encode())
    return paths, notes
