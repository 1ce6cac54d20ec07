"""The leaderboard's numbers, from the results store: one row per (method, model, reward, budget unit, milestone
budget) over the 'done' runs, with the mean and the interquartile mean (IQM), each with its 95% bootstrap interval
over seeds, of every (split, metric) in the store, the paired difference to the `base` method on the primary split,
mean compute used, and the number of failed runs; plus one row per 'n/a' cell and per cell whose runs all failed
(bench/leaderboard.py writes them). `ranking` is the answer the tables lead with, `glance` its console summary.

Pairing against `base`: a method's seed is paired with the base run of the same model (the
generator it fine-tunes) and seed at the same reward and budget. When the base model is deterministic across
seeds for a metric (all its values equal, which includes having a single seed), every seed of the method is paired with
that one base value instead, and when the base was evaluated at a single budget of that reward
(it does not train, so budget means nothing to it) that evaluation serves every budget.
Seeds the base lacks otherwise drop out of the difference; `delta_vs_base/n` counts the pairs.
"""

from __future__ import annotations

import math
import re
from typing import cast

import numpy as np
import pandas as pd

from bench.formats import cell_interval, human
from bench.stats import bootstrap_ci, iqm, kendall_tau, paired_difference_ci
from bench.store import Store
from bench.store_schema import USED_KEYS
from worlds import WORLDS, world_entry
from worlds.base import JUDGES_AGREE, READER_ONLY, WorldEntry

BASE_METHOD = "base"


# the metric that holds the training reward's value on an evaluation split (the proxy a method optimizes)
TRAINING_REWARD = "reward"


_RUN_KEYS = ["method", "model", "reward", "budget_unit"]

SECOND_JUDGES = tuple(sorted({entry.second_judge_metric for entry in WORLDS.values()} - {""}))
PANEL = (*SECOND_JUDGES, JUDGES_AGREE, READER_ONLY)
"""The metrics of a world's panel of judges beside its headline judge (worlds/base.py)."""
PANEL_MARGIN = 0.02
"""How far beyond zero the interval of a difference must lie for the panel's notes to name it: where the two judges
differ (their per-seed difference), and hacking (the share of images the rewards' reader alone passes, paired with
the base's). Two points: the judges' accuracies on held-out real digits differ by 1.2 (98.1% and 99.3%)."""
NOTES = JUDGES_DIFFER, HACKING = "judges differ", "hacking"
"""How the panel's notes begin (panel_notes), so that its summary (panel_summary) can list the cells they name."""


# What one leaderboard row describes; everything that groups results by cell reads it from here.
CELL_KEYS = [*_RUN_KEYS, "budget"]


def store_world(runs: pd.DataFrame) -> WorldEntry:
    """The world whose runs a store holds (one per store)."""
    worlds = runs["world"].unique()
    if len(worlds) != 1:
        raise ValueError(f"a store holds the runs of one world, this one of {', '.join(sorted(worlds))}")
    return world_entry(worlds[0])


def headline(runs: pd.DataFrame) -> tuple[str, str]:
    """The headline metric of the store's world (the held-out measure of success the tables lead with, and the one
    whose paired difference to `base` they show) and what it measures, for plots."""
    entry = store_world(runs)
    return entry.headline_metric, entry.headline_label


def ranked_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's runs and results that a leaderboard ranks: each method's newest version."""
    return _newest_versions(_labelled(store.runs_frame()), _labelled(store.results_frame()))


def leaderboard_table(runs: pd.DataFrame, results: pd.DataFrame, primary_split: str) -> pd.DataFrame:
    """The table of leaderboard.csv (see the module docstring for its rows and columns)."""
    metric_directions(results)  # fail early on a metric stored with both directions
    entry = store_world(runs)

    failed = runs[runs["status"] == "failed"].groupby(_RUN_KEYS).size()
    base_results = results[results["method"] == BASE_METHOD]
    rows = []
    for (method, model, reward, unit, budget), cell in results.groupby(CELL_KEYS, sort=False):
        cell_runs = cell.drop_duplicates("run_id")
        _check_cell(cell_runs, f"{method}@{model}/{reward} at {unit} {budget:g}")
        row = {
            "method": method,
            "model": model,
            "method_version": cell_runs["method_version"].iloc[0],
            "reward": reward,
            "budget_unit": unit,
            "budget": budget,
            "status": "done",
            "n_seeds": len(cell_runs),
            "failed": int(failed.get((method, model, reward, unit), 0)),
            "note": "",
        }
        row.update({k: cell_runs[k].mean() for k in USED_KEYS})
        for (split, metric), values in cell.groupby(["split", "metric"]):
            _put_ci(row, f"{split}/{metric}", bootstrap_ci(values["value"].to_numpy()))
            _put_ci(row, f"{split}/{metric}/iqm", bootstrap_ci(values["value"].to_numpy(), iqm), ("", "_lo", "_hi"))
            if split == primary_split and method != BASE_METHOD:
                base = _base_values(base_results[base_results["model"] == model], reward, unit, budget, split, metric)
                if base is not None:
                    ours = values.set_index("seed")["value"]
                    _put_delta(row, f"{split}/{metric}/delta_vs_base", ours, base)
        primary = cast(pd.DataFrame, cell[cell["split"] == primary_split])
        row["note"] = "; ".join(panel_notes(row, primary, primary_split, entry))
        rows.append(row)
    rows.extend(_rows_without_results(runs, results, failed))

    table = pd.DataFrame(rows)
    fixed = [
        "method",
        "model",
        "method_version",
        "reward",
        "budget_unit",
        "budget",
        "status",
        "n_seeds",
        "failed",
        "note",
        *USED_KEYS,
    ]
    metric_columns = [
        f"{split}/{metric}/{stat}"
        for split, metric in sorted(set(zip(results["split"], results["metric"])))
        for stat in ("mean", "lo", "hi", "iqm", "iqm_lo", "iqm_hi")
    ]
    delta_columns = [
        f"{primary_split}/{metric}/delta_vs_base/{stat}"
        for metric in sorted(results.loc[results["split"] == primary_split, "metric"].unique())
        for stat in ("mean", "lo", "hi", "n")
    ]
    table = table.reindex(columns=fixed + metric_columns + delta_columns)
    for column in delta_columns[3::4]:
        table[column] = table[column].astype("Int64")  # a count, empty where there is no base
    table["_base_last"] = table["method"] != BASE_METHOD  # base first in its model
    table = table.sort_values(["reward", "budget_unit", "budget", "model", "_base_last", "method"], na_position="last")
    return table.drop(columns="_base_last").reset_index(drop=True)


def panel_notes(row: dict, primary: pd.DataFrame, split: str, entry: WorldEntry) -> list[str]:
    """What a panel of judges says of a cell (its row so far, its results on the primary split), by PANEL_MARGIN:
    that the second judge reads it otherwise than the headline judge (the second's mean minus the headline's), and
    that it is hacking, where the share of its images that the rewards' reader passes and both judges fail rises
    above the base's (the mean of the paired difference)."""
    second, headline = entry.second_judge_metric, entry.headline_metric
    if not second:
        return []
    notes = []
    judged = primary[primary["metric"].isin([headline, second])].pivot(index="seed", columns="metric", values="value")
    if second in judged:  # a run recorded before the second judge has none until `bench rescore` reads its samples
        judged = judged.dropna()
        mean, low, high = paired_difference_ci(judged[second].to_numpy(), judged[headline].to_numpy())
        if low > PANEL_MARGIN or high < -PANEL_MARGIN:
            notes.append(f"{JUDGES_DIFFER} ({mean:+.3f})")
    hacking = f"{split}/{READER_ONLY}/delta_vs_base"
    if row.get(f"{hacking}/lo", math.nan) > PANEL_MARGIN:
        notes.append(f"{HACKING} ({row[f'{hacking}/mean']:+.3f})")
    return notes


def row_note(row: dict, failures: str) -> str:
    """A table row's note: how many of a done cell's runs failed ("<n> <failures>"), then its own note (why a cell is
    n/a, what the panel of judges says)."""
    notes = [f"{row['failed']} {failures}"] if row["status"] == "done" and row["failed"] else []
    if isinstance(row["note"], str) and row["note"]:
        notes.append(row["note"])
    return "; ".join(notes)


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a method's variant carry `method/variant` as their method: a row of the tables each."""
    frame = frame.copy()
    has_variant = frame["variant"] != ""
    frame.loc[has_variant, "method"] = frame.loc[has_variant, "method"] + "/" + frame.loc[has_variant, "variant"]
    return frame


def _newest_versions(runs: pd.DataFrame, results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Only the runs of each method's newest version (the one run last). A method whose code changed
    bumps its version; its older runs stay in the store, but averaging them with the new ones would
    describe neither."""
    if runs.empty:
        return runs, results
    newest = runs.groupby("method")["method_version"].last()  # runs_frame is in start order
    keep = runs["method_version"] == runs["method"].map(newest)
    return runs[keep], results[results["run_id"].isin(runs.loc[keep, "run_id"])]


def _check_cell(cell_runs: pd.DataFrame, where: str) -> None:
    # Two done runs of one seed in one cell would be averaged into a number that describes neither.
    duplicated = sorted(cell_runs.loc[cell_runs["seed"].duplicated(), "seed"].unique())
    if duplicated:
        raise ValueError(f"{where} has several done runs of seed(s) {duplicated}; keep one run per seed")


def _put_ci(
    row: dict, prefix: str, ci: tuple[float, float, float], suffixes: tuple[str, str, str] = ("/mean", "/lo", "/hi")
) -> None:
    for suffix, value in zip(suffixes, ci):
        row[prefix + suffix] = value


def _base_values(
    base: pd.DataFrame, reward: str, unit: str, budget: float, split: str, metric: str
) -> pd.Series | None:
    """The base method's values (indexed by seed) to compare a cell with, or None if it has none."""
    base = base[
        (base["reward"] == reward)
        & (base["budget_unit"] == unit)
        & (base["split"] == split)
        & (base["metric"] == metric)
    ]
    budgets = base["budget"].unique()
    if budget in budgets:
        base = base[base["budget"] == budget]
    elif len(budgets) != 1:
        return None  # no base at this budget, and no single budget-free evaluation to stand in
    return base.set_index("seed")["value"]


def _put_delta(row: dict, prefix: str, ours: pd.Series, base: pd.Series) -> None:
    if base.nunique() == 1:
        pairs_ours, pairs_base = ours.to_numpy(), np.full(len(ours), base.iloc[0])
    else:
        common = ours.index.intersection(base.index)
        if common.empty:
            return
        pairs_ours, pairs_base = ours[common].to_numpy(), base[common].to_numpy()
    _put_ci(row, prefix, paired_difference_ci(pairs_ours, pairs_base))
    row[f"{prefix}/n"] = len(pairs_ours)


def _rows_without_results(runs: pd.DataFrame, results: pd.DataFrame, failed: pd.Series) -> list[dict]:
    """Rows for 'n/a' cells and for cells whose runs all failed, so no cell silently vanishes."""
    rows = []
    not_applicable = runs[runs["status"] == "n/a"]
    for (method, model, reward, unit), cell in not_applicable.groupby(_RUN_KEYS):
        rows.append(
            {
                "method": method,
                "model": model,
                "method_version": ", ".join(sorted(cell["method_version"].unique())),
                "reward": reward,
                "budget_unit": unit,
                "budget": math.nan,
                "status": "n/a",
                "n_seeds": 0,
                "failed": int(failed.get((method, model, reward, unit), 0)),
                "note": "; ".join(sorted(cell["reason"].fillna("no reason given").unique())),
            }
        )
    has_rows = set(results[_RUN_KEYS].itertuples(index=False, name=None))
    has_rows |= set(not_applicable[_RUN_KEYS].itertuples(index=False, name=None))
    for key, count in failed.items():
        if key not in has_rows:
            method, model, reward, unit = key
            cell = runs[(runs[_RUN_KEYS].apply(tuple, axis=1) == key) & (runs["status"] == "failed")]
            rows.append(
                {
                    "method": method,
                    "model": model,
                    "method_version": ", ".join(sorted(cell["method_version"].unique())),
                    "reward": reward,
                    "budget_unit": unit,
                    "budget": math.nan,
                    "status": "failed",
                    "n_seeds": 0,
                    "failed": int(count),
                    "note": f"{count} failed, none done",
                }
            )
    return rows


def metric_directions(results: pd.DataFrame) -> dict[str, bool]:
    """metric -> higher_is_better, as stored with the values."""
    directions = results.groupby("metric")["higher_is_better"].unique()
    mixed = [m for m, d in directions.items() if len(d) > 1]
    if mixed:
        raise ValueError(
            f"metric(s) {mixed} are stored as both higher- and lower-is-better; fix the reward/metric code"
        )
    return {m: bool(d[0]) for m, d in directions.items()}


def ranking(table: pd.DataFrame, directions: dict[str, bool], primary_split: str, metric: str) -> pd.DataFrame:
    """The answer the tables lead with: for each reward, budget unit and model, the cells at that reward and unit's
    full (largest) budget, `base` first as the reference, then the methods ranked by the headline `metric` on the
    primary split, best first (`rank`: 1 for the best, ties at the printed precision share a rank; 0 for base),
    then the cells without results (n/a, failed: rank NaN)."""
    table = table.copy()  # one block per dtype: the table is built a column at a time, which pandas warns of below
    done = table[table["status"] == "done"]
    done = done[done["budget"] == done.groupby(["reward", "budget_unit"])["budget"].transform("max")].copy()
    column = f"{primary_split}/{metric}/mean"
    done["rank"] = 0.0
    is_method = done["method"] != BASE_METHOD
    if column in done:
        score = done[column].round(3) * (1 if directions.get(metric, True) else -1)
        # ranked within each reward, unit and model, base left out
        done.loc[is_method, "rank"] = (
            score[is_method]
            .groupby([done["reward"], done["budget_unit"], done["model"]])
            .rank(method="min", ascending=False)
        )
    else:
        done.loc[is_method, "rank"] = math.nan
    full_units = dict(zip(done["reward"], done["budget_unit"]))
    missing = table[table["status"] != "done"]
    missing = missing.loc[[full_units.get(r, u) == u for r, u in zip(missing["reward"], missing["budget_unit"])]]
    # how many of the cell's methods share each rank (base: none)
    done["tied"] = (
        done.groupby(["reward", "budget_unit", "model", "rank"])["rank"].transform("size").where(is_method, 0)
    )
    frame = pd.concat([done, missing.assign(rank=math.nan, tied=0)], ignore_index=True)
    frame = frame.astype({"n_seeds": int, "failed": int, "tied": int})  # an empty `missing` leaves them float
    # base, then the ranked methods, then the cells without results (sorted on a narrow frame of the keys: the table
    # is wide, and a column inserted into it fragments it)
    keys = frame[["reward", "budget_unit", "model", "rank", "method"]].assign(
        group=np.where(frame["method"] == BASE_METHOD, 0, np.where(frame["status"] == "done", 1, 2))
    )
    order = keys.sort_values(["reward", "budget_unit", "model", "group", "rank", "method"], na_position="last").index
    return frame.loc[order].reset_index(drop=True)


def ties_at_the_top(ranked: pd.DataFrame, primary_split: str, metric: str) -> list[str]:
    """One line per reward and model whose first place several methods share: the headline does not separate them,
    and where they share a fraction's ceiling, 1.000, it is saturated there."""
    column = f"{primary_split}/{metric}/mean"
    lines = []
    top = ranked.loc[(ranked["rank"] == 1) & (ranked["tied"] > 1)]
    for (reward, model), cell in top.groupby(["reward", "model"], sort=False):
        value = cell[column].iloc[0]
        saturated = round(value, 3) == 1.0 and ranked[column].dropna().between(0, 1).all()
        lines.append(
            f"{reward} @ {model}: {len(cell)} methods tie at #1 ({metric} {value:.3f}: "
            + ("saturated, the headline's ceiling" if saturated else "the headline does not separate them")
            + f"): {', '.join(cell['method'])}; read the other columns"
        )
    return lines


def panel_summary(ranked: pd.DataFrame, primary_split: str, metric: str, second: str) -> list[dict]:
    """Per reward and model at the full budget (`ranked`: the ranking) where a second judge (`second`) read three or
    more of its cells: how many (`cells`), whether the two judges order them alike (`tau`: Kendall's tau between the
    judges' means, base included), each judge's best cell (`best`, `second_best`), and the cells the panel's notes
    name (under JUDGES_DIFFER and HACKING)."""
    means = [f"{primary_split}/{m}/mean" for m in (metric, second)]
    if not second or means[1] not in ranked:
        return []
    rows = []
    done = ranked.loc[ranked["status"] == "done"].dropna(subset=means)
    for (reward, model), cell in done.groupby(["reward", "model"], sort=False):
        if len(cell) < 3:
            continue
        best, second_best = (cell.loc[cell[column].idxmax(), "method"] for column in means)
        rows.append(
            {
                "reward": reward,
                "model": model,
                "cells": len(cell),
                "tau": kendall_tau(list(zip(cell[means[0]], cell[means[1]]))),
                "best": best,
                "second_best": second_best,
                **{note: _noted(cell, note) for note in NOTES},
            }
        )
    return rows


def _noted(cells: pd.DataFrame, note: str) -> list[str]:
    """The cells whose note says `note` (panel_notes), each as "method (d)"."""
    found = []
    for method, text in zip(cells["method"], cells["note"]):
        said = re.search(rf"{note} \(([^)]*)\)", str(text))  # an empty note reads back from leaderboard.csv as NaN
        if said:
            found.append(f"{method} ({said.group(1)})")
    return found


def panel_lines(ranked: pd.DataFrame, primary_split: str, metric: str, second: str) -> list[str]:
    """panel_summary as one line per reward and model."""
    return [
        f"{r['reward']} @ {r['model']}: the two judges order its {r['cells']} cells with Kendall's tau {r['tau']:+.2f} "
        f"({metric}'s best {r['best']}, {second}'s {r['second_best']}); {JUDGES_DIFFER} on "
        f"{', '.join(r[JUDGES_DIFFER]) or 'none'}; {HACKING} named in {', '.join(r[HACKING]) or 'none'}"
        for r in panel_summary(ranked, primary_split, metric, second)
    ]


def full_budgets(cells: pd.DataFrame) -> str:
    """The largest budget of each unit among `cells`' done ones, as the tables name it: "nfe 300k" ("" for none)."""
    done = cells.loc[cells["status"] == "done"]
    return ", ".join(f"{unit} {human(budget)}" for unit, budget in done.groupby("budget_unit")["budget"].max().items())


def glance(
    table: pd.DataFrame, directions: dict[str, bool], primary_split: str, metric: str, asked: tuple[str, ...] = ()
) -> list[str]:
    """A few lines with the answer, for the console: each reward and model's best method by the headline at the full
    budget (ties: each), its headline with interval and paired difference to base, the other metrics' paired
    differences, and its compute; with `asked` (methods as the tables label them, method[/variant]), those methods'
    rows instead, each with its place in its reward and model's ranking."""
    ranked = ranking(table, directions, primary_split, metric)
    best = (
        ranked.loc[ranked["method"].isin(asked) & ranked["rank"].notna()] if asked else ranked.loc[ranked["rank"] == 1]
    )
    if best.empty:
        return []
    ranked_in_cell = ranked.loc[ranked["rank"] > 0].groupby(["reward", "model"]).size()
    others = sorted(
        (m for m in directions if m != metric and f"{primary_split}/{m}/delta_vs_base/mean" in best),
        key=lambda m: metric_order(m, metric),
    )
    budgets = full_budgets(best)
    where = [f"{r} @ {m}" for r, m in zip(best["reward"], best["model"])]
    width, method_width = max(map(len, where)), max(map(len, best["method"]))
    title = "The asked-for methods' rank by" if asked else "Best"
    lines = [f"{title} {metric} ({primary_split}) at the full budget, {budgets}; Δ = paired difference to base:"]
    for cell, r in zip(where, best.to_dict("records")):
        delta = [f"Δ {cell_interval(r, f'{primary_split}/{metric}/delta_vs_base', signed=True)}"]
        delta += [f"{m} Δ {r[f'{primary_split}/{m}/delta_vs_base/mean']:+.3f}" for m in others]
        place = (
            (
                f"#{r['rank']:.0f}{' (tied)' if r['tied'] > 1 else ''} of "
                f"{ranked_in_cell.get((r['reward'], r['model']), 0)}  "
                if r["rank"]
                else "base  "
            )
            if asked
            else ""
        )
        lines.append(
            f"  {cell:<{width}}  {r['method']:<{method_width}}  {place}{cell_interval(r, f'{primary_split}/{metric}')} "
            f"({delta[0]})  {'  '.join(delta[1:])}  {human(r['nfe'])} NFE, {human(r['wall_s'])} s"
        )
    return lines + [f"  {line}" for line in ties_at_the_top(ranked, primary_split, metric)]


def shown_metrics(results: pd.DataFrame, primary_split: str, metric: str) -> list[str]:
    """The primary split's metrics in the order tables show them (metric_order)."""
    return sorted(
        results.loc[results["split"] == primary_split, "metric"].unique(), key=lambda m: metric_order(m, metric)
    )


def metric_order(metric: str, headline: str) -> tuple[bool | str, ...]:
    """Sort key of the metrics a table shows: the headline, the second judge, the panel's agreement and the share only
    the rewards' reader passes, the training reward, then by name."""
    leading = (headline, *PANEL, TRAINING_REWARD)
    return (*(metric != first for first in leading), metric)
