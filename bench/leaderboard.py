"""Leaderboard tables and sample grids, generated from the results store, never by hand.

`write_leaderboard` writes, into one directory:
- leaderboard.csv: one row per (method, model, reward, budget unit, milestone budget) over the
  'done' runs, with the mean and the interquartile mean (IQM), each with its 95% bootstrap interval
  over seeds, of every (split, metric) in the store,
  the paired difference to the `base` method on the primary split, mean compute used, and the
  number of failed runs; plus one row per 'n/a' cell and per cell whose runs all failed.
- leaderboard.md: the same, one table per reward, for reading.
- samples_<reward>.png: a grid of primary-split samples, one row per method and model, one column per prompt.
Every file is written atomically, so a reader (or a crashed writer) never sees half a table.

Pairing against `base`: a method's seed is paired with the base run of the same model (the
generator it fine-tunes) and seed at the same reward and budget. When the base model is deterministic across
seeds for a metric (all its values equal, which includes having a single seed), every seed of the method is paired with
that one base value instead, and when the base was evaluated at a single budget of that reward
(it does not train, so budget means nothing to it) that evaluation serves every budget.
Seeds the base lacks otherwise drop out of the difference; `delta_vs_base/n` counts the pairs.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from bench.stats import bootstrap_ci, iqm, paired_difference_ci
from bench.store import USED_KEYS, Store
from models.io import atomic_write_bytes
from worlds import world_entry

BASE_METHOD = "base"
# the metric that holds the training reward's value on an evaluation split (the proxy a method optimizes)
TRAINING_REWARD = "reward"
GRID_COLUMNS = 20
MIN_CELL_PX = 32
_PAD = 4
_FONT_SIZE = 12
_RUN_KEYS = ["method", "model", "reward", "budget_unit"]
# What one leaderboard row describes; everything that groups results by cell reads it from here.
CELL_KEYS = [*_RUN_KEYS, "budget"]


def write_leaderboard(store: Store, out_dir: Path, *, primary_split: str = "eval_unseen") -> list[Path]:
    """Write leaderboard.csv, leaderboard.md and samples_<reward>.png; return their paths."""
    out_dir = Path(out_dir)
    # Read once: workers may still be writing, and every file must describe the same snapshot.
    runs, results = ranked_frames(store)
    if runs.empty:
        raise ValueError(f"{store.path} holds no runs; nothing to put on a leaderboard")
    if not results.empty and primary_split not in set(results["split"]):
        raise ValueError(
            f"primary split {primary_split!r} has no results in {store.path}; "
            f"splits there: {', '.join(sorted(results['split'].unique()))}"
        )
    table = _table(runs, results, primary_split)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = [out_dir / "leaderboard.csv", out_dir / "leaderboard.md"]
    atomic_write_bytes(written[0], table.to_csv(index=False).encode())
    atomic_write_bytes(written[1], _markdown(table, runs, results, primary_split, headline(runs)[0]).encode())
    for reward in sorted(results["reward"].unique()):
        grid = _sample_grid(store, results[results["reward"] == reward], primary_split)
        if grid is not None:
            path = out_dir / f"samples_{safe_name(reward)}.png"
            buffer = io.BytesIO()
            grid.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
    return written


def headline(runs: pd.DataFrame) -> tuple[str, str]:
    """The headline metric of the store's world (the held-out measure of success the tables lead with, and the one
    whose paired difference to `base` they show) and what it measures, for plots."""
    worlds = runs["world"].unique()
    if len(worlds) != 1:
        raise ValueError(f"a store holds the runs of one world, this one of {', '.join(sorted(worlds))}")
    entry = world_entry(worlds[0])
    return entry.headline_metric, entry.headline_label


def safe_name(name: str) -> str:
    """`name` as a part of a file name (rewards name the per-reward files)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def ranked_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's runs and results that a leaderboard ranks: each method's newest version."""
    return _newest_versions(_labelled(store.runs_frame()), _labelled(store.results_frame()))


def _table(runs: pd.DataFrame, results: pd.DataFrame, primary_split: str) -> pd.DataFrame:
    """The table of leaderboard.csv (see the module docstring for its rows and columns)."""
    _directions(results)  # fail early on a metric stored with both directions

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


def _directions(results: pd.DataFrame) -> dict[str, bool]:
    """metric -> higher_is_better, as stored with the values."""
    directions = results.groupby("metric")["higher_is_better"].unique()
    mixed = [m for m, d in directions.items() if len(d) > 1]
    if mixed:
        raise ValueError(
            f"metric(s) {mixed} are stored as both higher- and lower-is-better; fix the reward/metric code"
        )
    return {m: bool(d[0]) for m, d in directions.items()}


# -- markdown ---------------------------------------------------------------------------------


def ranking(table: pd.DataFrame, directions: dict[str, bool], primary_split: str, metric: str) -> pd.DataFrame:
    """The answer the tables lead with: for each reward, budget unit and model, the cells at that reward and unit's
    full (largest) budget, `base` first as the reference, then the methods ranked by the headline `metric` on the
    primary split, best first (`rank`: 1 for the best, ties at the printed precision share a rank; 0 for base),
    then the cells without results (n/a, failed: rank NaN)."""
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
    missing = missing[[full_units.get(r, u) == u for r, u in zip(missing["reward"], missing["budget_unit"])]]
    frame = pd.concat([done, missing.assign(rank=math.nan)], ignore_index=True)
    frame = frame.astype({"n_seeds": int, "failed": int})  # an empty `missing` leaves them float
    # base, then the ranked methods, then the cells without results (sorted on a narrow frame of the keys: the table
    # is wide, and a column inserted into it fragments it)
    keys = frame[["reward", "budget_unit", "model", "rank", "method"]].assign(
        group=np.where(frame["method"] == BASE_METHOD, 0, np.where(frame["status"] == "done", 1, 2))
    )
    order = keys.sort_values(["reward", "budget_unit", "model", "group", "rank", "method"], na_position="last").index
    return frame.loc[order].reset_index(drop=True)


def full_budgets(cells: pd.DataFrame) -> str:
    """The largest budget of each unit among `cells`' done ones, as the tables name it: "nfe 300k" ("" for none)."""
    done = cells.loc[cells["status"] == "done"]
    return ", ".join(f"{unit} {_human(budget)}" for unit, budget in done.groupby("budget_unit")["budget"].max().items())


def glance(table: pd.DataFrame, directions: dict[str, bool], primary_split: str, metric: str) -> list[str]:
    """A few lines with the answer, for the console: each reward and model's best method by the headline at the full
    budget (ties: each), its headline with interval and paired difference to base, the other metrics' paired
    differences, and its compute."""
    ranked = ranking(table, directions, primary_split, metric)
    best = ranked.loc[ranked["rank"] == 1]
    if best.empty:
        return []
    others = sorted(
        (m for m in directions if m != metric and f"{primary_split}/{m}/delta_vs_base/mean" in best),
        key=lambda m: metric_order(m, metric),
    )
    budgets = full_budgets(best)
    where = [f"{r} @ {m}" for r, m in zip(best["reward"], best["model"])]
    width, method_width = max(map(len, where)), max(map(len, best["method"]))
    lines = [f"Best {metric} ({primary_split}) at the full budget, {budgets}; Δ = paired difference to base:"]
    for cell, r in zip(where, best.to_dict("records")):
        delta = [f"Δ {_ci(r, f'{primary_split}/{metric}/delta_vs_base', signed=True)}"]
        delta += [f"{m} Δ {r[f'{primary_split}/{m}/delta_vs_base/mean']:+.3f}" for m in others]
        lines.append(
            f"  {cell:<{width}}  {r['method']:<{method_width}}  {_ci(r, f'{primary_split}/{metric}')} "
            f"({delta[0]})  {'  '.join(delta[1:])}  {_human(r['nfe'])} NFE, {_human(r['wall_s'])} s"
        )
    return lines


def interval(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """`mean [lo, hi]` at 3 decimals, or the mean alone where the interval is a point at that precision (every seed
    agreed, or one seed); "—" for no value."""
    if mean is None or pd.isna(mean):
        return "—"
    spec = "+.3f" if signed else ".3f"
    low, high = f"{lo:{spec}}", f"{hi:{spec}}"
    return f"{mean:{spec}}" if low == high == f"{mean:{spec}}" else f"{mean:{spec}} [{low}, {high}]"


def _markdown(table: pd.DataFrame, runs: pd.DataFrame, results: pd.DataFrame, primary_split: str, metric: str) -> str:
    """leaderboard.md; `metric` is the headline."""
    directions = _directions(results)
    arrows = {m: "↑" if up else "↓" for m, up in directions.items()}
    suite = ", ".join(sorted(runs["suite"].unique()))
    lines = [
        f"# Leaderboard: {suite}",
        "",
        f"Each reward's first table is the answer: at the full budget, each model's `base` (the reference) and then "
        f"the methods ranked by {metric} on the `{primary_split}` prompts, best first. "
        f"A cell is the mean [95% bootstrap CI] over `seeds` seeds (the mean alone where every seed agreed), "
        "on those prompts unless a split is named; ↑ higher is better, ↓ lower is better. "
        + (
            f"Δ {metric} vs base is the per-seed paired difference to the base model at the same reward "
            "and budget (against its single value where the base is deterministic across seeds). "
            if metric in arrows
            else ""
        )
        + "NFE, reward queries, labels and wall s are the compute used, means over seeds. The second table has every "
        "budget; leaderboard.csv has every split, metric and interquartile mean. "
        "`version` is the method's version; "
        f"code at git {', '.join(sorted(runs['git_sha'].unique()))}, "
        "base models "
        + ", ".join(
            f"{model} {', '.join(sorted(hashes))}"
            for model, hashes in runs.groupby("model")["base_model_hash"].unique().items()
        )
        + ".",
    ]
    ranked = ranking(table, directions, primary_split, metric)
    for reward in sorted(table["reward"].unique()):
        full = full_budgets(ranked.loc[ranked["reward"] == reward])
        lines += ["", f"## Reward: {reward}", ""]
        lines += [f"At the full budget ({full}):" if full else "No results:", ""]
        lines += _reward_table(
            ranked.loc[ranked["reward"] == reward],
            results.loc[results["reward"] == reward],
            primary_split,
            arrows,
            metric,
            True,
        )
        lines += ["", f"### {reward}: every budget", ""]
        lines += _reward_table(
            table[table["reward"] == reward], results[results["reward"] == reward], primary_split, arrows, metric, False
        )
    # In name order, not start order: parallel workers start runs in no fixed order.
    failed = (
        runs[runs["status"] == "failed"]
        .fillna({"reason": "no reason given"})
        .sort_values(["method", "reward", "seed", "run_id"])
    )
    if not failed.empty:
        lines += [
            "",
            "## Failed runs",
            "",
            "| run_id | method | model | reward | seed | reason |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {_md(r.run_id)} | {_md(r.method)} | {_md(r.model)} | {_md(r.reward)} | {r.seed} | {_md(r.reason)} |"
            for r in failed.itertuples()
        ]
    return "\n".join(lines) + "\n"


def shown_metrics(results: pd.DataFrame, primary_split: str, metric: str) -> list[str]:
    """The primary split's metrics in the order tables show them: the headline, the training reward, then by name."""
    return sorted(
        results.loc[results["split"] == primary_split, "metric"].unique(), key=lambda m: metric_order(m, metric)
    )


def metric_order(metric: str, headline: str) -> tuple[bool, bool, str]:
    """Sort key of the metrics a table shows: the headline, the training reward, then by name."""
    return metric != headline, metric != TRAINING_REWARD, metric


def _reward_table(
    table: pd.DataFrame,
    results: pd.DataFrame,
    primary_split: str,
    arrows: dict[str, str],
    metric: str,
    ranked: bool,
) -> list[str]:
    """One reward's table: the ranking (`ranked`: a rank column, no version, budget or other splits) or every budget."""
    primary_metrics = shown_metrics(results, primary_split, metric)
    other_splits = sorted(
        results.loc[(results["metric"] == metric) & (results["split"] != primary_split), "split"].unique()
    )
    if ranked:
        other_splits = []
    has_delta = metric in primary_metrics
    used = ["nfe", "reward_queries", *(["labels"] if (table["labels"].fillna(0) > 0).any() else []), "wall_s"]
    header = ["#"] * ranked + ["method", "model"] + ["version", "budget"] * (not ranked) + ["seeds"]
    metric_headers = [f"{m} {arrows[m]}" for m in primary_metrics]
    header += metric_headers[:1] + [f"Δ {metric} vs base"] * has_delta + metric_headers[1:]
    header += [f"{metric} ({s}) {arrows[metric]}" for s in other_splits]
    header += [USED_NAMES[k] for k in used] + ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    for r in table.to_dict("records"):
        done = r["status"] == "done"
        empty = "n/a" if r["status"] == "n/a" else "—"
        cells = [_rank(r["rank"])] if ranked else []
        cells += [_md(r["method"]), _md(r["model"])]
        if not ranked:
            cells += [_md(r["method_version"]), f"{r['budget_unit']} {_human(r['budget'])}" if done else "—"]
        cells.append(str(r["n_seeds"]))
        values = [_ci(r, f"{primary_split}/{m}") if done else empty for m in primary_metrics]
        delta = [_ci(r, f"{primary_split}/{metric}/delta_vs_base", signed=True) if done else empty] * has_delta
        cells += values[:1] + delta + values[1:]
        cells += [_ci(r, f"{s}/{metric}") if done else empty for s in other_splits]
        cells += [_human(r[k]) if done else "—" for k in used]
        note = f"{r['failed']} failed run(s), see below" if done and r["failed"] else r["note"]
        cells.append(_md(note))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


USED_NAMES = {
    "nfe": "NFE",
    "reward_queries": "reward queries",
    "labels": "labels",
    "samples": "samples",
    "wall_s": "wall s",
}


def _rank(rank: float) -> str:
    return "—" if pd.isna(rank) or rank == 0 else str(int(rank))


def _ci(row: dict, prefix: str, signed: bool = False) -> str:
    mean = row.get(f"{prefix}/mean", math.nan)
    return interval(mean, row.get(f"{prefix}/lo", math.nan), row.get(f"{prefix}/hi", math.nan), signed)


def _human(x: float) -> str:
    """3 significant digits with a k/M/B suffix: 1.2M, 35k, 12.3."""
    x = float(f"{x:.3g}")  # round first, so 999,999 becomes 1M rather than 1e+03k
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- sample grid ------------------------------------------------------------------------------


def _sample_grid(store: Store, results: pd.DataFrame, primary_split: str) -> Image.Image | None:
    """Rows = (model, method) pairs with stored samples, labelled, base first in each model; columns = the first
    GRID_COLUMNS distinct prompts of the primary split (the first sample of each, at the largest budget, first seed),
    each headed by its prompt. The splits list each phrasing's prompts in class order, so the first prompts cover
    every class (every digit). None if no method stored samples."""
    rows, prompts = [], []
    pairs = sorted(set(zip(results["model"], results["method"])), key=lambda p: (p[0], p[1] != BASE_METHOD, p[1]))
    for model, method in pairs:
        ours = results.loc[(results["model"] == model) & (results["method"] == method)]
        first = ours.loc[ours["budget"] == ours["budget"].max()].sort_values(["seed", "run_id"]).iloc[0]
        try:
            sample_prompts, images = store.samples(first["run_id"], int(first["milestone"]), primary_split)
        except ValueError:
            continue  # evaluated without storing samples: nothing to show
        firsts = {}
        for index, prompt in enumerate(sample_prompts):
            firsts.setdefault(prompt, index)
        prompts = prompts or list(firsts)[:GRID_COLUMNS]  # every row shows the first row's prompts
        label = f"{method} @ {model}\n{first['budget_unit']} {_human(first['budget'])}, seed {first['seed']}"
        cells = _to_cells(images[[firsts.get(p, 0) for p in prompts]])
        missing = [j for j, p in enumerate(prompts) if p not in firsts]
        cells[missing] = 255  # a prompt this run has no sample of stays blank
        rows.append((label, cells))
    if not rows:
        return None

    font = ImageFont.load_default(size=_FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(measure.multiline_textbbox((0, 0), label, font=font)[2] for label, _ in rows)) + 2 * _PAD
    label_h = int(max(measure.multiline_textbbox((0, 0), label, font=font)[3] for label, _ in rows))
    header_h = int(max(measure.textbbox((0, 0), prompt, font=font)[2] for prompt in prompts)) + 2 * _PAD
    cell_h = max(cells.shape[1] for _, cells in rows)
    cell_w = max(cells.shape[2] for _, cells in rows)
    row_h = max(cell_h, label_h)

    canvas = Image.new(
        "RGB", (label_w + len(prompts) * (cell_w + _PAD), header_h + _PAD + len(rows) * (row_h + _PAD)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, prompt in enumerate(prompts):
        # each column's prompt, written upwards above it
        text = Image.new("RGB", (header_h - _PAD, _FONT_SIZE + _PAD), "white")
        ImageDraw.Draw(text).text((0, 0), prompt, fill="black", font=font)
        rotated = text.rotate(90, expand=True)
        canvas.paste(rotated, (label_w + j * (cell_w + _PAD) + (cell_w - rotated.width) // 2, _PAD))
    for i, (label, cells) in enumerate(rows):
        y = header_h + _PAD + i * (row_h + _PAD)
        draw.multiline_text((_PAD, y), label, fill="black", font=font)
        for j, cell in enumerate(cells):
            canvas.paste(Image.fromarray(cell), (label_w + j * (cell_w + _PAD), y))
    return canvas


def _to_cells(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W), C 1 or 3 -> RGB (N, H', W', 3), upscaled (nearest) to >= MIN_CELL_PX."""
    images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    scale = max(1, math.ceil(MIN_CELL_PX / min(images.shape[1:3])))
    return np.ascontiguousarray(images.repeat(scale, axis=1).repeat(scale, axis=2))
