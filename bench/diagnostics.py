"""Training diagnostics: what every training step of a run reports, kept in the results store beside its milestones
and shown in the report beside the curves.

Each step() of a run leaves one record (a Trace, saved in the run's checkpoint, written with the next milestone):
- what the method's step() returns: its loss, and for the policy-gradient methods (methods/toolkit/policy_gradient.py)
  the ratio's mean, std and largest |rho - 1| on the first pass (ratio_first_*: the parameters are still the sampling
  ones, so the ratio is 1 but for float error) and on the later passes (ratio_later_*), the share of terms the trust
  region bounds (clip_frac, or mask_frac for Flow-DPPO's mask), the share of groups whose rewards are all equal
  (zero_std_groups) and the approximate KL to the reference (kl);
- what the harness measures for every method: the training NFE after the step (nfe), the mean and std of every score
  the training's reward queries returned in the step (scored_mean, scored_std; a method that learns from an
  annotator's labels sees no scores and has none), and the mean norm of the step's gradients before clipping
  (grad_norm; every optimizer step goes through Trainer.apply_gradients).

A first pass whose ratio is farther than FIRST_PASS_TOLERANCE from 1 anywhere is a warning: the update re-evaluates
the chains differently from how they were sampled (a batch's numerics, half precision, a sampler and a loss that
disagree), the question flow_grpo #247 and DanceGRPO #114 ask. The run's log says so when it happens, and the report
marks the cell.

In a data-parallel run the main process's share is recorded: its reward scores and step() diagnostics; the NFE and
the gradient norm are every process's (the meters' sum; the gradients are averaged before the norm is taken).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch

from bench.formats import human, safe_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIRST_PASS_TOLERANCE = 1e-3
"""How far from 1 a first-pass ratio may be (|rho - 1|) before the run records a warning."""

HARNESS_NAMES = ("nfe", "scored_mean", "scored_std", "grad_norm", "run_id", "milestone", "step")
"""The names a method's step() may not report: the diagnostics the harness adds to a step's record, and the columns
that place a step in the store's frame of them (Store.diagnostics_frame)."""

TRUST_REGION_NAMES = ("clip_frac", "mask_frac", "clip_fraction")
"""What the methods call the share of terms their trust region bounds (PPO's clip, DPPO's mask, AWM's clip)."""

CELL_KEYS = ["reward", "method", "model", "budget_unit", "budget"]

FIRST_PASS_COLUMN = "first-pass ρ, farthest from 1"
"""The summary's column that the warning reads (and the report marks)."""

# (column of the report's table, what it reads, how a run's steps are reduced, how it is written)
SUMMARY = (
    ("steps", "nfe", "count", "{:.0f}"),
    ("reward, first 10%", "scored_mean", "head", "{:.3f}"),
    ("reward, last 10%", "scored_mean", "tail", "{:.3f}"),
    ("reward std, last 10%", "scored_std", "tail", "{:.3f}"),
    ("grad norm (median)", "grad_norm", "median", "{:.3g}"),
    (FIRST_PASS_COLUMN, "ratio_first_max_dev", "max", "{:.1e}"),
    ("ratio std, later passes", "ratio_later_std", "mean", "{:.3g}"),
    ("trust region bounds", "trust_region", "mean", "{:.3f}"),
    ("zero-std groups", "zero_std_groups", "mean", "{:.3f}"),
    ("KL, last 10%", "kl", "tail", "{:.3g}"),
)

PANELS = (
    ("scored_mean", "reward (mean of the step's scores)"),
    ("grad_norm", "gradient norm before clipping"),
    ("ratio_later_std", "ratio std, later passes"),
    ("trust_region", "share bounded by the trust region"),
    ("zero_std_groups", "share of zero-std groups"),
    ("kl", "KL to the reference"),
)


class Trace:
    """A run's step records since its last recorded milestone."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def add(self, stats: dict[str, float], nfe: float, scores: torch.Tensor, gradient_norms: list[float]) -> None:
        """Records one step: its step() `stats`, the training NFE after it, the `scores` its reward queries returned
        (N,) and the norms of its optimizer steps' gradients."""
        clash = sorted(set(stats) & set(HARNESS_NAMES))
        if clash:
            raise ValueError(f"a step reported {', '.join(clash)}, a name the harness records itself")
        record = {**stats, "nfe": float(nfe)}
        if len(scores):
            record["scored_mean"] = scores.double().mean().item()
            record["scored_std"] = scores.double().std(unbiased=False).item()
        if gradient_norms:
            record["grad_norm"] = sum(gradient_norms) / len(gradient_norms)
        self.steps.append(record)

    def columns(self) -> dict[str, np.ndarray]:
        """Name -> its value at each recorded step (NaN where a step did not report it), names in the order first
        seen: what Store.record_milestone takes."""
        names = list(dict.fromkeys(name for record in self.steps for name in record))
        return {name: np.array([record.get(name, math.nan) for record in self.steps]) for name in names}

    def clear(self) -> None:
        self.steps = []

    def state_dict(self) -> list[dict[str, float]]:
        return [dict(record) for record in self.steps]

    def load_state_dict(self, state: list[dict[str, float]]) -> None:
        self.steps = [dict(record) for record in state]


def first_pass_warning(stats: dict[str, float]) -> str | None:
    """What is wrong with a step whose first-pass ratio strays farther than FIRST_PASS_TOLERANCE from 1, or None."""
    deviation = stats.get("ratio_first_max_dev", 0.0)
    if deviation > FIRST_PASS_TOLERANCE:
        return (
            f"first-pass ratio {1 + deviation:.6f} is {deviation:.1e} from 1 (tolerance {FIRST_PASS_TOLERANCE:g}): the "
            "update does not re-evaluate the chains as they were sampled"
        )
    return None


def with_cells(diagnostics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The diagnostics the report reads (SUMMARY's and PANELS', `trust_region` whichever name its method gives the
    share) of the ranked `runs`, each step with its run's CELL_KEYS. Only those: a method's own names (its "reward")
    may be a run's column's."""
    present = [name for name in TRUST_REGION_NAMES if name in diagnostics]
    frame = diagnostics[["run_id", "step"]].copy()
    frame["trust_region"] = diagnostics[present].bfill(axis=1).iloc[:, 0] if present else np.nan
    for name in dict.fromkeys(name for _, name, *_ in SUMMARY if name != "trust_region"):
        frame[name] = diagnostics.get(name, np.nan)
    return frame.merge(runs[["run_id", *CELL_KEYS]], on="run_id")


def _reduce(values: pd.Series, how: str) -> float:
    values = values.dropna()
    if how == "count":
        return float(len(values))
    if values.empty:
        return math.nan
    tenth = max(1, len(values) // 10)
    if how == "head":
        return float(values.iloc[:tenth].mean())
    if how == "tail":
        return float(values.iloc[-tenth:].mean())
    return float(getattr(values, how)())


def summary_table(runs: pd.DataFrame, diagnostics: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (CELL_KEYS) of the ranked runs that recorded diagnostics: each SUMMARY column reduced over
    each run's steps, then the mean over its seeds, with `seeds` and `warned` (how many of them strayed on a first
    pass)."""
    frame = with_cells(diagnostics, runs)
    if frame.empty:  # none recorded, or only by runs the leaderboard does not rank (a method's earlier version)
        return pd.DataFrame(columns=[*CELL_KEYS, "seeds", "warned", *(c for c, *_ in SUMMARY)])
    per_run = []
    for _, steps in frame.groupby("run_id", sort=False):
        steps = steps.sort_values("step")
        row = {key: steps[key].iloc[0] for key in CELL_KEYS}
        for column, name, how, _ in SUMMARY:
            row[column] = _reduce(steps[name], how)
        row["warned"] = float(row[FIRST_PASS_COLUMN] > FIRST_PASS_TOLERANCE)
        per_run.append(row)
    table = pd.DataFrame(per_run)
    grouped = table.groupby(CELL_KEYS, sort=False)
    summary = pd.DataFrame(grouped.mean(numeric_only=True))
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index().sort_values(CELL_KEYS, kind="stable").reset_index(drop=True)


def summary_cells(row: dict) -> list[str]:
    """A summary row's SUMMARY values as the report writes them ('' where the cell has none)."""
    cells = []
    for column, _, _, style in SUMMARY:
        value = row[column]
        cells.append("" if pd.isna(value) else style.format(value))
    return cells


def figure(diagnostics: pd.DataFrame, runs: pd.DataFrame, styles: dict[tuple[str, str], dict]) -> Figure | None:
    """The PANELS the cells of one reward recorded, against training NFE: per cell (method@model at one budget) the
    mean over its seeds at each step, smoothed over a twentieth of the run's steps; None where there is nothing."""
    from matplotlib.figure import Figure  # the run loop imports this module; only the report draws

    frame = with_cells(diagnostics, runs)
    panels = [(name, title) for name, title in PANELS if name in frame and frame[name].notna().any()]
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    legend_rows = math.ceil(frame.groupby(CELL_KEYS[1:]).ngroups / 4)
    height = 3.0 * rows + 0.5 + 0.2 * legend_rows  # the panels, the title, and the legend below them
    drawn = Figure(figsize=(4.2 * columns, height))
    axes = drawn.subplots(rows, columns, squeeze=False).flatten()
    for ax, (name, title) in zip(axes, panels):
        for key, cell in frame.groupby(CELL_KEYS[1:], sort=True):
            method, model, unit, budget = cast(tuple, key)
            per_step = pd.DataFrame(cell.groupby("step")[[name, "nfe"]].mean())
            if per_step[name].notna().sum() == 0:
                continue
            window = max(1, len(per_step) // 20)
            smooth = per_step[name].rolling(window, min_periods=1).mean()
            style = styles.get((method, model), {})
            label = f"{method}@{model}" + (f" ({unit} {human(budget)})" if frame["budget"].nunique() > 1 else "")
            # markers every eighth of the curve: a variant shares its method's colour and differs by its marker
            ax.plot(
                per_step["nfe"],
                smooth,
                label=label,
                color=style.get("color"),
                linestyle=style.get("linestyle"),
                marker=style.get("marker"),
                markevery=max(1, len(per_step) // 8),
                markersize=4,
            )
        if name == "grad_norm" and (frame[name].dropna() > 0).all():
            ax.set_yscale("log")  # methods' gradients differ by orders of magnitude
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training NFE", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(lambda value, _: human(value))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    drawn.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(4, len(unique)), fontsize=7)
    drawn.tight_layout(rect=(0, (0.1 + 0.2 * legend_rows) / height, 1, 1 - 0.4 / height))
    return drawn


def write_figures(
    diagnostics: pd.DataFrame, runs: pd.DataFrame, styles: dict[tuple[str, str], dict], out_dir: Path
) -> list[Path]:
    """diagnostics_<reward>.png for every reward whose runs recorded diagnostics; returns their paths."""
    if diagnostics.empty:
        return []
    from bench.curves import save_png  # drawing loads matplotlib, which the run loop never needs

    written = []
    rewards = runs.set_index("run_id")["reward"]
    for reward, part in diagnostics.groupby(diagnostics["run_id"].map(rewards), sort=True):
        drawn = figure(part, runs, styles)
        if drawn is not None:
            drawn.suptitle(f"Training diagnostics, reward: {reward}")
            written.append(save_png(drawn, Path(out_dir) / f"diagnostics_{safe_name(str(reward))}.png"))
    return written
