"""Everything a suite's results directory holds, generated from one snapshot of its results store:

- leaderboard.csv / .md and samples_<reward>.png (bench.leaderboard),
- aggregate.csv and improvement.csv (bench.aggregate),
- compute_ / overoptimization_ / pareto_<reward>.png (bench.curves),
- diagnostics_<reward>.png, where the runs recorded training diagnostics (bench.diagnostics),
- the suite's study tables, if it has any (bench/experiments/),
- report.html: one static, self-contained page (inline style, images embedded as data URIs, no
  script) with the tables, plots and sample grids of every reward, the aggregates across rewards,
  the studies, every run's status, git sha and config, and the failed runs with their reasons.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from bench.aggregate import ENTRY_KEYS, TASK_KEY, entry_label, write_aggregates
from bench.curves import series_styles, write_curves
from bench.diagnostics import (
    FIRST_PASS_COLUMN,
    FIRST_PASS_TOLERANCE,
    SUMMARY,
    summary_cells,
    summary_table,
    write_figures,
)
from bench.experiments.suite import Study
from bench.experiments.tables import write_studies
from bench.formats import USED_NAMES, human, interval, rank_text, safe_name
from bench.leaderboard import write_leaderboard
from bench.standings import (
    PANEL,
    full_budgets,
    glance,
    headline,
    metric_order,
    panel_lines,
    ranked_frames,
    ranking,
    row_note,
    store_world,
    ties_at_the_top,
)
from bench.store import Store
from bench.store_schema import USED_KEYS
from models.io import atomic_write_bytes

PRIMARY_SPLIT = "eval_unseen"
FIGURE_KINDS = (
    ("compute", "Anytime curves: reward and judge versus compute"),
    ("overoptimization", "Over-optimization: held-out judge versus training reward"),
    ("pareto", "Trade-offs: reward versus diversity and FID"),
    ("samples", "Samples at the full budget (first seed)"),
)

MATRIX_COLUMNS = 30
"""The most columns of one probability-of-improvement table: 30 fit a 1,400 px window at the matrix's font."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td { background: #fde8e8; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.8em; margin: 0; }
.note { color: #666; font-size: 0.9em; }
details table { font-size: 0.78em; }
nav ul { display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; list-style: none; padding: 0; }
table.matrix { font-size: 0.66em; }
table.matrix td, table.matrix th { padding: 0.2em 0.2em; }
table.matrix thead th + th { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }
"""


def write_results(
    store: Store,
    out_dir: Path,
    studies: tuple[Study, ...] = (),
    primary_split: str = PRIMARY_SPLIT,
    asked: tuple[str, ...] = (),
) -> tuple[list[Path], list[str]]:
    """Write every file of the module docstring into out_dir; return their paths and the console's few lines of
    answer (bench.standings.glance: about the `asked` methods, where given)."""
    out_dir = Path(out_dir)
    with store.snapshot():
        written = write_leaderboard(store, out_dir, primary_split=primary_split)
        runs, results = ranked_frames(store)
        results.attrs["store"] = str(store.path)  # what a study reads beside the store (tables.py: study_store)
        study_paths = write_studies(runs, results, out_dir, studies)
        all_runs = store.runs_frame()
        diagnostics = store.diagnostics_frame()
    table = pd.read_csv(out_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    directions = results.groupby("metric")["higher_is_better"].first().to_dict()
    metric, label = headline(runs)
    aggregate_paths, notes = write_aggregates(results, out_dir, primary_split, metric)
    written += aggregate_paths
    written += write_curves(table, directions, out_dir, primary_split, metric, label)
    written += write_figures(diagnostics, runs, series_styles(runs), out_dir)
    trained = summary_table(runs, diagnostics)
    page = _page(
        table, all_runs, runs, directions, out_dir, notes, study_paths, store.path.name, primary_split, metric, trained
    )
    atomic_write_bytes(out_dir / "report.html", page.encode())
    return written + study_paths + [out_dir / "report.html"], glance(table, directions, primary_split, metric, asked)


def _page(table, all_runs, runs, directions, out_dir, notes, study_paths, store_name, split, metric, trained) -> str:
    suite = ", ".join(sorted(all_runs["suite"].unique()))
    offered = list(store_world(runs).rewards)  # the world's own order: its headline reward first
    tasks = sorted(table[TASK_KEY].unique(), key=lambda t: (offered.index(t) if t in offered else len(offered), t))
    ranked = ranking(table, directions, split, metric)
    second = store_world(runs).second_judge_metric
    counts = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().sort_index().items())
    # one count of runs, the sweep's: the ranked ones; a method's earlier versions are kept in the store, unranked
    earlier = len(all_runs) - len(runs)
    earlier_text = f"; {earlier} more of methods' earlier versions, kept in the store and not ranked" if earlier else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Leaderboard: {_e(suite)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Leaderboard: {_e(suite)}</h1>",
        f'<p class="note">{len(runs)} runs ({_e(counts)}{earlier_text}). '
        f"Numbers are on the <code>{_e(split)}</code> prompts: the mean over seeds and, below it, its 95% "
        "percentile-bootstrap interval (none where every seed agreed); ↑ higher is better, ↓ lower is better. "
        "Δ is the per-seed paired difference to base. Each reward's table of every budget adds the "
        "interquartile mean (IQM); leaderboard.csv has every split and metric.</p>",
        "<nav><ul>"
        + "".join(f'<li><a href="#task-{_e(safe_name(t))}">{_e(TASK_KEY)}: {_e(t)}</a></li>' for t in tasks)
        + '<li><a href="#aggregate">Across rewards</a></li><li><a href="#runs">Runs</a></li>'
        + '<li><a href="#failed">Failed runs</a></li><li><a href="#provenance">Provenance</a></li></ul></nav>',
    ]
    for task in tasks:
        cells = table[table[TASK_KEY] == task]
        top = ranked.loc[ranked[TASK_KEY] == task]
        full = full_budgets(top)
        shown, families, panel = metric_tables(cells, directions, split, metric)
        parts.append(f'<h2 id="task-{_e(safe_name(task))}">{_e(TASK_KEY)}: {_e(task)}</h2>')
        parts.append(
            f'<p class="note">At the full budget ({_e(full or "none done")}): each model\'s base, then the methods '
            f"ranked by {_e(metric)}, best first.</p>"
        )
        parts.append(_cell_table(top, directions, split, metric, shown, ranked=True))
        ties = ties_at_the_top(top, split, metric) + panel_lines(top, split, metric, second)
        if ties:
            parts.append('<ul class="note">' + "".join(f"<li>{_e(line)}</li>" for line in ties) + "</ul>")
        beside = [(families, f"{metric} by prompt family"), (panel, "read by the panel of judges")]
        for metrics, what in beside:
            if metrics:
                parts.append(f'<p class="note">The same rows, {_e(what)}:</p>')
                parts.append(_cell_table(top, directions, split, metric, metrics, ranked=True, compute=False))
        parts.append(
            f"<details><summary>Every budget ({len(cells)} rows, with interquartile means)</summary>"
            + _cell_table(cells, directions, split, metric, shown, ranked=False)
            + "".join(
                _cell_table(cells, directions, split, metric, metrics, ranked=False, compute=False)
                for metrics, _ in beside
                if metrics
            )
            + "</details>"
        )
        for kind, title in FIGURE_KINDS:
            image = out_dir / f"{kind}_{safe_name(task)}.png"
            if image.exists():
                parts.append(f"<h3>{_e(title)}</h3>{_image(image, f'{title}, {TASK_KEY} {task}')}")
        cells_trained = trained[trained[TASK_KEY] == task]
        if not cells_trained.empty:
            parts.append(_diagnostics_section(cells_trained, out_dir / f"diagnostics_{safe_name(task)}.png", task))
    parts.append(_aggregate_section(out_dir, notes))
    if study_paths:
        parts.append('<h2 id="studies">Studies</h2>')
        parts += [f"<h3>{_e(path.stem)}</h3><pre>{_e(path.read_text())}</pre>" for path in study_paths]
    parts.append(_runs_section(all_runs, runs))
    parts.append(
        '<h2 id="provenance">Provenance</h2>'
        f'<p class="note">Generated from <code>{_e(store_name)}</code>. Code at git {_codes(runs["git_sha"])}; base '
        "models "
        + "; ".join(f"{_e(model)} {_codes(hashes)}" for model, hashes in runs.groupby("model")["base_model_hash"])
        + ".</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def metric_tables(
    cells: pd.DataFrame, directions: dict[str, bool], split: str, headline: str
) -> tuple[list[str], list[str], list[str]]:
    """The metrics of a reward's first table and those of the tables beside it, which would take the first past a
    1,400-pixel screen: the headline's breakdown by prompt family (scenes' judge_single, judge_two, ...: the metrics
    named as the headline is, up to its first "_"), and the panel of judges' (standings.PANEL). Empty where the world
    has no families, or no second judge."""
    metrics = sorted((m for m in directions if f"{split}/{m}/mean" in cells), key=lambda m: metric_order(m, headline))
    prefix = headline.split("_")[0] + "_"
    families = [m for m in metrics if m.startswith(prefix) and m != headline]
    panel = [m for m in metrics if m in PANEL]
    return [m for m in metrics if m not in families and m not in panel], families, panel


def _cell_table(
    cells: pd.DataFrame,
    directions: dict[str, bool],
    split: str,
    headline: str,
    metrics: list[str],
    ranked: bool,
    compute: bool = True,
) -> str:
    """One reward's cells with the given `metrics`: the full-budget ranking (`ranked`) or every budget, with each
    metric's IQM too, and (`compute`) the compute each used. A value's interval goes on a line of its own, so the
    table fits a laptop's screen."""
    delta = f"{split}/{headline}/delta_vs_base"
    has_delta = headline in metrics
    used = [k for k in USED_KEYS if k != "samples" and (k != "labels" or (cells[k].fillna(0) > 0).any())] * compute
    header = ["#"] * ranked + [*ENTRY_KEYS] + ["version", "budget"] * (not ranked) + ["seeds"]
    metric_headers = [f"{m} {'↑' if directions[m] else '↓'}" for m in metrics]
    header += metric_headers[:1] + [f"Δ {headline} vs base"] * has_delta + metric_headers[1:]
    header += [USED_NAMES[k] for k in used] + ["note"] * compute
    rows = []
    for r in cells.to_dict("records"):
        done = r["status"] == "done"
        cols = [_e(rank_text(r["rank"], r["tied"]))] if ranked else []
        cols += [_label(r[k]) for k in ENTRY_KEYS]
        if not ranked:
            cols += [_e(r["method_version"]), _e(f"{r['budget_unit']} {human(r['budget'])}") if done else "—"]
        cols.append(str(r["n_seeds"]))
        values = []
        for m in metrics:
            text = _value(r, f"{split}/{m}/mean", f"{split}/{m}/lo", f"{split}/{m}/hi")
            iqm = r.get(f"{split}/{m}/iqm", math.nan)
            if not ranked and not pd.isna(iqm):  # its interval is in leaderboard.csv
                text += f'<br><span class="note">IQM {iqm:.3f}</span>'
            values.append(f'<td class="num">{text}</td>' if done else _num("—"))
        deltas = [
            f'<td class="num">{_value(r, f"{delta}/mean", f"{delta}/lo", f"{delta}/hi", signed=True)}</td>'
        ] * has_delta
        cols += values[:1] + deltas + values[1:]
        cols += [_num(human(r[k]) if done else "—") for k in used]
        if compute:
            cols.append(_e(row_note(r, "failed run(s)")))
        cols = [c if c.startswith("<td") else f"<td>{c}</td>" for c in cols]
        rows.append(f'<tr class="{"" if done else "failed"}">' + "".join(cols) + "</tr>")
    return _table(header, rows)


def _diagnostics_section(cells: pd.DataFrame, image: Path, task: str) -> str:
    """A reward's training diagnostics (bench/diagnostics.py): the table of its cells, and their curves."""
    parts = [
        "<h3>Training diagnostics</h3>",
        '<p class="note">Per cell, each run\'s steps reduced as the column says, then the mean over its seeds: the '
        "reward is the mean of the scores the training's reward queries returned in a step; ρ is the policy-gradient "
        "ratio, 1 on the first pass but for float error (a cell marked ⚠ strayed farther than "
        f"{FIRST_PASS_TOLERANCE:g} in one of its seeds); the trust region's share is the clipped (PPO) or masked "
        "(DPPO) terms; zero-std groups teach a group-relative method nothing; KL is to the frozen reference.</p>",
    ]
    header = ["method", "model", "budget", "seeds", *(column for column, *_ in SUMMARY)]
    rows = []
    for r in cells.to_dict("records"):
        values = summary_cells(r)
        warned = f" ⚠ {r['warned'] * r['seeds']:.0f} of {r['seeds']}" if r["warned"] else ""
        values[[c for c, *_ in SUMMARY].index(FIRST_PASS_COLUMN)] += warned
        cols = [f"<td>{_label(r['method'])}</td>", f"<td>{_label(r['model'])}</td>"]
        cols += [_num(f"{r['budget_unit']} {human(r['budget'])}"), _num(str(r["seeds"]))]
        rows.append("<tr>" + "".join(cols + [_num(v) for v in values]) + "</tr>")
    parts.append(_table(header, rows))
    if image.exists():
        parts.append(_image(image, f"Training diagnostics, {TASK_KEY} {task}"))
    return "".join(parts)


def _aggregate_section(out_dir: Path, notes: list[str]) -> str:
    aggregate = pd.read_csv(out_dir / "aggregate.csv", keep_default_na=False, na_values=[""])
    improvement = pd.read_csv(out_dir / "improvement.csv", keep_default_na=False, na_values=[""])
    parts = [
        '<h2 id="aggregate">Across rewards</h2>',
        '<p class="note">Training reward normalized per reward: 0 = base, 1 = the best cell mean observed; '
        "pooled over rewards and seeds, intervals from the stratified bootstrap (seeds resampled within "
        "their reward).</p>",
    ]
    parts += [f'<p class="note">Left out: {_e(n)}</p>' for n in notes]
    header = [*ENTRY_KEYS, "budget", "rewards", "runs", "normalized mean", "normalized IQM"]
    rows = [
        "<tr>"
        + "".join(f"<td>{_e(r[k])}</td>" for k in ENTRY_KEYS)
        + f"<td>{_e(r['budget_unit'])} {_e(human(r['budget']))}</td><td>{_e(r['tasks'])}</td><td>{r['n_runs']}</td>"
        + _num(_interval(r, "mean", "mean_lo", "mean_hi"))
        + _num(_interval(r, "iqm", "iqm_lo", "iqm_hi"))
        + "</tr>"
        for r in aggregate.to_dict("records")
    ]
    parts.append(_table(header, rows))
    for (metric, unit, budget), pairs in improvement.groupby(["metric", "budget_unit", "budget"]):
        parts.append(
            f"<h3>Probability of improvement: {_e(metric)} at {_e(unit)} {_e(human(budget))}</h3>"
            '<p class="note">Row beats column: the chance that a run of the row method beats a run of the '
            "column method on a reward drawn at random; its 95% stratified bootstrap interval shows on hovering a "
            "cell, and improvement.csv has them all (and pairs methods across models); one matrix per model.</p>"
        )
        a_keys, b_keys = [f"{k}_a" for k in ENTRY_KEYS], [f"{k}_b" for k in ENTRY_KEYS]
        lookup = {(tuple(r[k] for k in a_keys), tuple(r[k] for k in b_keys)): r for r in pairs.to_dict("records")}
        entries = sorted(
            set(pairs[a_keys].itertuples(index=False, name=None))
            | set(pairs[b_keys].itertuples(index=False, name=None))
        )
        for model in sorted({entry[ENTRY_KEYS.index("model")] for entry in entries}):
            names = [entry for entry in entries if entry[ENTRY_KEYS.index("model")] == model]
            # a matrix wider than a 1,400 px window is split into tables of its columns, each with every row
            pieces = math.ceil(len(names) / MATRIX_COLUMNS)
            size = math.ceil(len(names) / pieces)
            for first in range(0, len(names), size):
                columns = names[first : first + size]
                rows = []
                for a in names:
                    cols = [_chance(lookup[a, b]) if (a, b) in lookup else "<td>—</td>" for b in columns]
                    rows.append(f"<tr><th>{_e(entry_label(a))}</th>" + "".join(cols) + "</tr>")
                methods = [entry[ENTRY_KEYS.index("method")] for entry in columns]
                parts.append(_table([f"row beats column, on {model}", *methods], rows, css_class="matrix"))
    return "\n".join(parts)


def _runs_section(all_runs: pd.DataFrame, ranked: pd.DataFrame) -> str:
    ranked_ids = set(ranked["run_id"])
    header = [
        "run",
        *ENTRY_KEYS,
        "variant",
        "version",
        TASK_KEY,
        "seed",
        "budget",
        "status",
        "git sha",
        "started",
        "finished",
        "config",
    ]
    rows = []
    for r in all_runs.sort_values(["method", TASK_KEY, "seed", "run_id"]).to_dict("records"):
        status = r["status"] + ("" if r["run_id"] in ranked_ids else " (older version, not ranked)")
        config = json.dumps(json.loads(r["config_json"]), indent=1, sort_keys=True)
        rows.append(
            f'<tr class="{"failed" if r["status"] == "failed" else ""}"><td><code>{_e(r["run_id"])}</code></td>'
            + "".join(f"<td>{_e(r[k])}</td>" for k in ENTRY_KEYS)
            + f"<td>{_e(r['variant'])}</td><td>{_e(r['method_version'])}</td>"
            f"<td>{_e(r[TASK_KEY])}</td><td>{r['seed']}</td>"
            f"<td>{_e(r['budget_unit'])} {_e(human(r['budget']))}</td><td>{_e(status)}</td>"
            f'<td><code title="{_e(r["git_sha"])}">{_e(r["git_sha"][:10])}</code></td>'
            f"<td>{_e(_minute(r['started']))}</td><td>{_e(_minute(r['finished']))}</td>"
            f"<td><details><summary>config {_e(r['config_hash'][:10])}</summary><pre>{_e(config)}</pre></details></td>"
            "</tr>"
        )
    failed = all_runs[all_runs["status"] == "failed"].sort_values(["method", TASK_KEY, "seed", "run_id"])
    failed_rows = [
        f"<tr><td><code>{_e(r['run_id'])}</code></td>"
        + "".join(f"<td>{_e(r[k])}</td>" for k in ENTRY_KEYS)
        + f"<td>{_e(r[TASK_KEY])}</td><td>{r['seed']}</td><td>{_e(r['reason'] or 'no reason given')}</td></tr>"
        for r in failed.to_dict("records")
    ]
    return "\n".join(
        [
            '<h2 id="runs">Runs</h2>',
            _table(header, rows),
            '<h2 id="failed">Failed runs</h2>',
            _table(["run", *ENTRY_KEYS, TASK_KEY, "seed", "reason"], failed_rows)
            if failed_rows
            else '<p class="note">None.</p>',
        ]
    )


def _table(header: list[str], rows: list[str], css_class: str = "") -> str:
    return (
        (f'<table class="{css_class}">' if css_class else "<table>")
        + "<thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "\n".join(rows)
        + "</tbody></table>"
    )


def _interval(row: dict, mean: str, lo: str, hi: str, signed: bool = False) -> str:
    return interval(row.get(mean, math.nan), row.get(lo, math.nan), row.get(hi, math.nan), signed)


def _value(row: dict, mean: str, lo: str, hi: str, signed: bool = False) -> str:
    """A value, escaped, with its interval (if not a point) on a line below it."""
    text = _interval(row, mean, lo, hi, signed)
    value, _, rest = text.partition(" ")
    return _e(value) + (f'<br><span class="note">{_e(rest)}</span>' if rest else "")


def _chance(pair: dict) -> str:
    """A probability of improvement's cell: the chance, its interval on hovering (the matrix stays narrow)."""
    interval_text = _interval(pair, "p", "lo", "hi").partition(" ")[2]
    title = f' title="95% interval {_e(interval_text)}"' if interval_text else ""
    return f'<td class="num"{title}>{_e(_interval(pair, "p", "p", "p"))}</td>'


def _minute(timestamp) -> str:
    """An ISO time to the minute (the store keeps the seconds): 2026-11-30 21:05; "" for none (a run still running
    has no finish, which the frame holds as NaN)."""
    return timestamp[:16].replace("T", " ") if isinstance(timestamp, str) else ""


def _num(text: str) -> str:
    return f'<td class="num">{_e(text)}</td>'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _codes(values: pd.Series) -> str:
    return ", ".join(f"<code>{_e(v)}</code>" for v in sorted(values.unique()))


def _e(value: object) -> str:
    return html.escape(str(value))


def _label(value: object) -> str:
    """A method's label, which may break after its variant's slash (`tempflow_grpo/<wbr>tuned`): the tables' widest
    column would otherwise hold the longest label on one line."""
    return _e(value).replace("/", "/<wbr>")
