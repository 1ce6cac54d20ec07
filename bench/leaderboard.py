"""Leaderboard tables and sample grids, generated from the results store, never by hand.

`write_leaderboard` writes, into one directory:
- leaderboard.csv: the leaderboard's table (bench/standings.py: one row per method, model, reward, budget unit and
  milestone budget, every split and metric with its interval, the paired difference to `base`, compute used).
- leaderboard.md: the same, one table per reward, for reading, led by the ranking at the full budget.
- samples_<reward>.png: a grid of primary-split samples, one row per method and model, one column per prompt.
Every file is written atomically, so a reader (or a crashed writer) never sees half a table.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from bench.formats import USED_NAMES, cell_interval, human, md_cell, rank_text, safe_name
from bench.standings import (
    BASE_METHOD,
    HACKING,
    JUDGES_DIFFER,
    PANEL_MARGIN,
    full_budgets,
    headline,
    leaderboard_table,
    metric_directions,
    panel_summary,
    ranked_frames,
    ranking,
    row_note,
    shown_metrics,
    store_world,
    ties_at_the_top,
)
from bench.store import Store
from models.io import atomic_write_bytes
from worlds.base import READER_ONLY

GRID_COLUMNS = 20


MIN_CELL_PX = 32


_PAD = 4


_FONT_SIZE = 12


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
    table = leaderboard_table(runs, results, primary_split)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = [out_dir / "leaderboard.csv", out_dir / "leaderboard.md"]
    atomic_write_bytes(written[0], table.to_csv(index=False).encode())
    second = store_world(runs).second_judge_metric
    atomic_write_bytes(written[1], _markdown(table, runs, results, primary_split, headline(runs)[0], second).encode())
    group = store_world(runs).prompt_group
    for reward in sorted(results["reward"].unique()):
        grid = _sample_grid(store, results[results["reward"] == reward], primary_split, group)
        if grid is not None:
            path = out_dir / f"samples_{safe_name(reward)}.png"
            buffer = io.BytesIO()
            grid.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
    return written


def _markdown(
    table: pd.DataFrame, runs: pd.DataFrame, results: pd.DataFrame, primary_split: str, metric: str, second: str
) -> str:
    """leaderboard.md; `metric` is the headline, `second` the second judge's metric ("" for none)."""
    directions = metric_directions(results)
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
        ties = ties_at_the_top(ranked.loc[ranked["reward"] == reward], primary_split, metric)
        lines += ["", *(f"- {line}" for line in ties)] if ties else []
        lines += ["", f"### {reward}: every budget", ""]
        lines += _reward_table(
            table[table["reward"] == reward], results[results["reward"] == reward], primary_split, arrows, metric, False
        )
    lines += _panel_table(ranked, primary_split, metric, second)
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
            f"| {md_cell(r.run_id)} | {md_cell(r.method)} | {md_cell(r.model)} | {md_cell(r.reward)} | {r.seed} | "
            f"{md_cell(r.reason)} |"
            for r in failed.itertuples()
        ]
    return "\n".join(lines) + "\n"


def _panel_table(ranked: pd.DataFrame, primary_split: str, metric: str, second: str) -> list[str]:
    """The panel of judges at the full budget (standings.panel_summary), a row per reward and model."""
    rows = panel_summary(ranked, primary_split, metric, second)
    if not rows:
        return []
    lines = [
        "",
        "## The panel of judges",
        "",
        f"At the full budget, per reward and model: Kendall's tau between the orders of its cells (base included) by "
        f"the headline judge's {metric} and the second judge's {second} (a judge of another design), each judge's "
        f"best cell, and the cells whose note says `{JUDGES_DIFFER} (d)` (the interval of the per-seed difference "
        f"between the judges, {second} minus {metric}, lies beyond {PANEL_MARGIN}; d its mean) or `{HACKING} (d)` (the "
        f"interval of its {READER_ONLY}, the share of images the rewards' reader passes and both judges fail, paired "
        f"with the base's, lies above {PANEL_MARGIN}; d its mean).",
        "",
        f"| reward | model | cells | Kendall's tau | best by {metric} | best by {second} | {JUDGES_DIFFER} "
        f"| {HACKING} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['reward']} | {r['model']} | {r['cells']} | {r['tau']:+.2f} | {md_cell(r['best'])} | "
        f"{md_cell(r['second_best'])} | {md_cell(', '.join(r[JUDGES_DIFFER]) or 'none')} | "
        f"{md_cell(', '.join(r[HACKING]) or 'none')} |"
        for r in rows
    ]
    return lines


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
        cells = [rank_text(r["rank"], r["tied"])] if ranked else []
        cells += [md_cell(r["method"]), md_cell(r["model"])]
        if not ranked:
            cells += [md_cell(r["method_version"]), f"{r['budget_unit']} {human(r['budget'])}" if done else "—"]
        cells.append(str(r["n_seeds"]))
        values = [cell_interval(r, f"{primary_split}/{m}") if done else empty for m in primary_metrics]
        delta = [
            cell_interval(r, f"{primary_split}/{metric}/delta_vs_base", signed=True) if done else empty
        ] * has_delta
        cells += values[:1] + delta + values[1:]
        cells += [cell_interval(r, f"{s}/{metric}") if done else empty for s in other_splits]
        cells += [human(r[k]) if done else "—" for k in used]
        cells.append(md_cell(row_note(r, "failed run(s), see below")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grid_prompts(prompts: list[str], group: Callable[[str], str]) -> list[str]:
    """GRID_COLUMNS of the split's distinct prompts, taken in turn from each of its `group`s (the world's prompt
    families) so that every family shows, in the split's order. A world without families gives the split's first
    prompts: the splits list each phrasing's prompts in class order, so those cover every class (every digit)."""
    families: dict[str, list[str]] = {}
    for prompt in prompts:
        families.setdefault(group(prompt), []).append(prompt)
    taken = [family[k] for k in range(len(prompts)) for family in families.values() if k < len(family)]
    chosen = set(taken[:GRID_COLUMNS])
    return [prompt for prompt in prompts if prompt in chosen]


def _sample_grid(
    store: Store, results: pd.DataFrame, primary_split: str, group: Callable[[str], str]
) -> Image.Image | None:
    """Rows = (model, method) pairs with stored samples, labelled, base first in each model; columns = the primary
    split's prompts of grid_prompts (the first sample of each, at the largest budget, first seed), each headed by its
    prompt. None if no method stored samples."""
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
        prompts = prompts or grid_prompts(list(firsts), group)  # every row shows the first row's prompts
        label = f"{method} @ {model}\n{first['budget_unit']} {human(first['budget'])}, seed {first['seed']}"
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
