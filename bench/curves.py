"""Anytime curves, drawn from the leaderboard table (one row per cell and milestone budget), one PNG per
kind and reward, next to the tables. The headline is the world's (worlds/: the judge's accuracy in digits, the
CLIP score at scale):

- compute_<reward>.png: training reward and the headline metric versus the compute used to reach each
  milestone (NFE, reward queries, wall seconds): mean over seeds with its 95% bootstrap band, one line
  per series (a ranked entry at one budget unit) through its milestones.
- overoptimization_<reward>.png: the headline metric versus training reward through the milestones, with
  both intervals. A line that runs right while falling is a method optimizing the proxy past the point
  where it tracks the held-out measure (the over-optimization curves of the reward-hacking literature).
- pareto_<reward>.png: training reward versus diversity and versus FID, one point per cell; the cells
  no other cell beats on both axes are joined (the Pareto front).

Every series keeps one look in every figure of every suite (`series_style`): its method's colour and marker,
its model's line style; no two series of a panel share all three. Where one panel would hold more than
MAX_SERIES_PER_PANEL series, each model gets its own (small multiples). The legend lies below the panels, so it never
covers a title or squeezes a panel; compute axes read 100k, 1M. Figures are built with matplotlib's object API (no
pyplot), so no global backend state is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bench.aggregate import ENTRY_KEYS, TASK_KEY, entry_label
from bench.formats import human, safe_name
from bench.standings import TRAINING_REWARD
from methods import METHODS
from models.io import atomic_write_bytes
from worlds import WORLDS

COMPUTE_UNITS = {"nfe": "NFE", "reward_queries": "reward queries", "wall_s": "wall seconds"}
PARETO_METRICS = ("diversity", "fid")
SERIES_KEYS = [*ENTRY_KEYS, "budget_unit"]
_PANEL_INCHES = (4.2, 3.2)
MAX_SERIES_PER_PANEL = 8
"""More series than this in one panel, and the figure draws one panel per model instead."""
_LEGEND_COLUMN_INCHES = 2.8
_LEGEND_ROW_INCHES = 0.22
# tab20's strong colours first, then its light ones: the first ten methods get the most distinct colours
_COLORS = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
# every model's place among its world's generators: a suite runs in one world, so only those share a figure
_WORLD_MODELS = {model: list(entry.models) for entry in WORLDS.values() for model in entry.models}
# no "*": the over-optimization figure marks each series' full budget with a star
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "8", "d", "H")
_LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 1, 2)))


def series_style(method: str, model: str, variants: list[str]) -> dict[str, object]:
    """The look of a method's series on a model, the same in every figure: the method's colour and marker (by its
    place in the methods registry), the model's line style (by its place among its world's generators). A variant
    (`method/variant`) keeps its method's colour and moves its marker on by its place in `variants` (every variant
    name the figures show, sorted), so the variants of one method stay apart."""
    name, _, variant = method.partition("/")
    index = list(METHODS).index(name) if name in METHODS else len(METHODS)
    marker = index + (variants.index(variant) + 1 if variant else 0)
    models = _WORLD_MODELS.get(model, [model])
    return {
        "color": _COLORS[index % len(_COLORS)],
        "marker": _MARKERS[marker % len(_MARKERS)],
        "linestyle": _LINE_STYLES[models.index(model) % len(_LINE_STYLES)],
    }


def series_styles(frame: pd.DataFrame) -> dict[tuple[str, str], dict[str, object]]:
    """(method, model) -> series_style of every entry (ENTRY_KEYS) of `frame`, a variant's marker counted among the
    variants the frame holds."""
    entries = sorted(frame[ENTRY_KEYS].drop_duplicates().itertuples(index=False, name=None))
    variants = sorted({method.partition("/")[2] for method, _ in entries} - {""})
    return {(method, model): series_style(method, model, variants) for method, model in entries}


def write_curves(
    table: pd.DataFrame,
    directions: dict[str, bool],
    out_dir: Path,
    primary_split: str,
    headline: str,
    headline_label: str,
) -> list[Path]:
    """Write every figure whose metrics the table has; return their paths.

    table: leaderboard.csv as a frame. directions: metric -> higher is better.
    """
    return [
        save_png(figure, Path(out_dir) / f"{kind}_{safe_name(task)}.png")
        for kind, task, figure in figures(table, directions, primary_split, headline, headline_label)
    ]


def save_png(figure: Figure, path: Path) -> Path:
    """Writes `figure` to `path` as every figure of the results is written (100 dpi, cropped to what it draws)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def figures(
    table: pd.DataFrame, directions: dict[str, bool], primary_split: str, headline: str, headline_label: str
) -> Iterator[tuple[str, str, Figure]]:
    """(kind, task, figure) for every figure whose metrics the table has (arguments as in `write_curves`)."""
    done = table.loc[table["status"] == "done"]
    styles = series_styles(done)
    for task, cells in done.groupby(TASK_KEY):
        for kind, draw in (("compute", _compute), ("overoptimization", _overoptimization), ("pareto", _pareto)):
            figure = draw(cells, directions, styles, primary_split, headline, headline_label)
            if figure is not None:
                figure.suptitle(f"{TASK_KEY}: {task} ({primary_split})")
                yield kind, str(task), figure


def _series(cells: pd.DataFrame):
    """(label, entry, cells of the series in budget order) for each series."""
    several_units = cells["budget_unit"].nunique() > 1
    for key, series in cells.groupby(SERIES_KEYS):
        entry, unit = key[:-1], key[-1]
        label = entry_label(entry) + (f" ({unit} budgets)" if several_units else "")
        yield label, entry, series.sort_values("budget")


def _stat(cells: pd.DataFrame, split: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prefix = f"{split}/{metric}"
    return tuple(cells[f"{prefix}/{s}"].to_numpy(dtype=float) for s in ("mean", "lo", "hi"))


def _panels(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, cells) of each panel: every series in one, or, where that would hold more than MAX_SERIES_PER_PANEL
    series, one per model (titled by it)."""
    if len(cells[SERIES_KEYS].drop_duplicates()) <= MAX_SERIES_PER_PANEL or cells["model"].nunique() == 1:
        return [("", cells)]
    return [(str(model), part) for model, part in cells.groupby("model")]


def _compute_axis(ax) -> None:
    """Compute on an axis as 100k, 1M, few enough ticks to stay apart."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: human(value)))


def _has(cells: pd.DataFrame, split: str, *metrics: str) -> bool:
    return all(f"{split}/{m}/mean" in cells and cells[f"{split}/{m}/mean"].notna().any() for m in metrics)


def _axis_label(metric: str, directions: dict[str, bool]) -> str:
    return f"{metric} {'↑' if directions.get(metric, True) else '↓'}"


def _compute(cells, directions, styles, split, headline, headline_label) -> Figure | None:
    metrics = [m for m in (TRAINING_REWARD, headline) if _has(cells, split, m)]
    if not metrics:
        return None
    panels = _panels(cells)
    rows = [(metric, title, part) for metric in metrics for title, part in panels]
    figure = Figure(layout="constrained", figsize=(_PANEL_INCHES[0] * len(COMPUTE_UNITS), _PANEL_INCHES[1] * len(rows)))
    axes = figure.subplots(len(rows), len(COMPUTE_UNITS), squeeze=False)
    for row, (metric, title, part) in enumerate(rows):
        for col, (unit, unit_label) in enumerate(COMPUTE_UNITS.items()):
            ax = axes[row, col]
            for label, entry, series in _series(part):
                mean, lo, hi = _stat(series, split, metric)
                x = series[unit].to_numpy(dtype=float)
                ax.plot(x, mean, label=label, **styles[entry])
                ax.fill_between(x, lo, hi, color=styles[entry]["color"], alpha=0.2, linewidth=0)
            ax.set_xlabel(f"{unit_label} used")
            ax.set_ylabel(_axis_label(metric, directions))
            if title:
                ax.set_title(title, fontsize=9)
            _compute_axis(ax)
            ax.grid(alpha=0.3)
    _legend(figure)
    return figure


def _overoptimization(cells, directions, styles, split, headline, headline_label) -> Figure | None:
    if not _has(cells, split, TRAINING_REWARD, headline):
        return None
    panels = _panels(cells)
    figure = Figure(layout="constrained", figsize=(_PANEL_INCHES[0] * 1.5 * len(panels), _PANEL_INCHES[1] * 1.5))
    for ax, (title, part) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for label, entry, series in _series(part):
            x, x_lo, x_hi = _stat(series, split, TRAINING_REWARD)
            y, y_lo, y_hi = _stat(series, split, headline)
            ax.errorbar(
                x,
                y,
                xerr=[x - x_lo, x_hi - x],
                yerr=[y - y_lo, y_hi - y],
                capsize=2,
                label=label,
                **styles[entry],
            )
            ax.plot(x[-1:], y[-1:], marker="*", markersize=14, color=styles[entry]["color"])  # the full budget
        ax.set_xlabel(f"training reward (proxy) {_axis_label(TRAINING_REWARD, directions)[-1]}")
        ax.set_ylabel(f"{headline_label}: {_axis_label(headline, directions)}")
        ax.set_title(f"{title + ': ' if title else ''}milestones in budget order; ★ = full budget", fontsize=9)
        ax.grid(alpha=0.3)
    _legend(figure)
    return figure


def _pareto(cells, directions, styles, split, headline, headline_label) -> Figure | None:
    metrics = [m for m in PARETO_METRICS if _has(cells, split, TRAINING_REWARD, m)]
    if not metrics:
        return None
    panels = _panels(cells)
    figure = Figure(
        layout="constrained", figsize=(_PANEL_INCHES[0] * 1.2 * len(metrics), _PANEL_INCHES[1] * 1.3 * len(panels))
    )
    axes = figure.subplots(len(panels), len(metrics), squeeze=False)
    for row, (title, part) in enumerate(panels):
        for ax, metric in zip(axes[row], metrics):
            for label, entry, series in _series(part):
                x, _, _ = _stat(series, split, TRAINING_REWARD)
                y, _, _ = _stat(series, split, metric)
                # the line (through the milestones in budget order) carries the series' look into the legend
                ax.plot(x, y, label=label, linewidth=1, markersize=4, **styles[entry])
                ax.scatter(
                    x, y, color=styles[entry]["color"], marker=styles[entry]["marker"], s=np.linspace(20, 60, len(x))
                )
            x, _, _ = _stat(part, split, TRAINING_REWARD)
            y, _, _ = _stat(part, split, metric)
            front = pareto_front(x, y, directions.get(TRAINING_REWARD, True), directions.get(metric, True))
            ax.plot(
                x[front],
                y[front],
                linestyle="--",
                marker="o",
                markersize=12,
                markerfacecolor="none",
                color="gray",
                zorder=0,
                label="Pareto front",
            )
            ax.set_xlabel(_axis_label(TRAINING_REWARD, directions))
            ax.set_ylabel(_axis_label(metric, directions))
            ax.locator_params(axis="x", nbins=5)  # reward values such as -137.5 need room
            ax.grid(alpha=0.3)
        heading = "one point per cell, joined in budget order; larger = larger budget"
        axes[row, 0].set_title(f"{title}: {heading}" if title else heading, fontsize=9)
    _legend(figure)
    return figure


def _legend(figure: Figure) -> None:
    """The figure's one legend, every series of its panels once, below them: as wide as the figure, however many
    series it names, so it never covers a title or squeezes a panel."""
    named: dict[str, Artist] = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    columns = min(max(1, int(figure.get_figwidth() // _LEGEND_COLUMN_INCHES)), len(named))
    # the figure grows by the legend's height, so its panels keep theirs
    figure.set_figheight(figure.get_figheight() + _LEGEND_ROW_INCHES * math.ceil(len(named) / columns))
    figure.legend(list(named.values()), list(named), loc="outside lower center", ncols=columns)


def pareto_front(x: np.ndarray, y: np.ndarray, x_higher_better: bool, y_higher_better: bool) -> np.ndarray:
    """Indices of the points no other point beats on both axes (at least as good on both, better on
    one), ordered by x. x, y: (N,)."""
    sx = np.where(x_higher_better, x, -x)
    sy = np.where(y_higher_better, y, -y)
    beaten = (
        (sx[None, :] >= sx[:, None])
        & (sy[None, :] >= sy[:, None])
        & ((sx[None, :] > sx[:, None]) | (sy[None, :] > sy[:, None]))
    ).any(axis=1)
    front = np.flatnonzero(~beaten)
    return front[np.argsort(x[front], kind="stable")]
