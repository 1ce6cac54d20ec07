"""What the studies share: each experiment's study table (the modules beside this one) answers one question from the
store alone, with these measures. Seeds give 95% bootstrap intervals (bench/stats.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.experiments.suite import Study
from bench.formats import interval
from bench.stats import bootstrap_ci, kendall_tau, stratified_bootstrap_ci
from models.io import atomic_write_bytes

PRIMARY_SPLIT = "eval_unseen"
TRAIN_SPLIT = "eval_seen"


def ci(values) -> str:
    """Mean [95% bootstrap CI], the mean alone where the interval is a point (every seed agreed)."""
    mean, lo, hi = values if isinstance(values, tuple) else bootstrap_ci(values)
    return interval(mean, lo, hi)


def queries_to_reach(queries: np.ndarray, rewards: np.ndarray, target: float) -> float:
    """The first (linearly interpolated) x at which the curve (queries, rewards) reaches `target`,
    or inf if it never does. queries: increasing (N,), starting at the base model's 0 (or any compute axis)."""
    for i in range(len(queries)):
        if rewards[i] >= target:
            if i == 0:
                return float(queries[0])
            fraction = (target - rewards[i - 1]) / (rewards[i] - rewards[i - 1])
            return float(queries[i - 1] + fraction * (queries[i] - queries[i - 1]))
    return math.inf


def efficiency(
    results: pd.DataFrame,
    method: str,
    reference: str,
    base: str,
    reward: str,
    spent_on: str = "reward_queries",
    read: tuple[str, ...] = (),
    metric: str = "reward",
    reference_budget: float | None = None,
) -> dict | None:
    """The compute `spent_on` (reward_queries, nfe, wall_s) that `method` needs for its mean `metric` curve over seeds
    to reach `reference`'s final mean (or its mean at the milestone of `reference_budget`), as a fraction of the
    reference's compute there, with a bootstrap interval that resamples each method's seeds (seed i of one method has
    nothing to do with seed i of the other). None if either has no runs. `read`: metrics of the primary split read
    off the method's mean curves (from `base`'s value at 0) where its `metric` reaches the target, in `at_target`
    (NaN where it never does): the judge at equal reward."""
    split = results.loc[(results["reward"] == reward) & (results["split"] == PRIMARY_SPLIT)]
    ours = split.loc[split["metric"] == metric]
    base_values = ours.loc[ours["label"] == base, "value"]
    if base_values.empty:
        raise ValueError(f"the efficiency study needs {base} runs for the {metric} at 0 queries")
    start = base_values.mean()
    references = ours.loc[ours["label"] == reference]
    if reference_budget is not None:
        references = references.loc[references["budget"] == reference_budget]
    finals = references.sort_values("milestone").groupby("seed").last()
    curves = ours.loc[ours["label"] == method].pivot_table(index="seed", columns="milestone", values="value")
    if finals.empty or curves.empty:
        return None
    queries = np.concatenate([[0.0], ours.loc[ours["label"] == method].groupby("milestone")[spent_on].mean()])
    targets, spent = finals["value"].to_numpy(), finals[spent_on].to_numpy()

    def fraction(reference_seeds: np.ndarray, method_seeds: np.ndarray, axis: int = -1) -> np.ndarray:
        # arguments are (resamples of) seed indices, so that both seed sets are resampled on their own
        reference_seeds, method_seeds = reference_seeds.astype(int), method_seeds.astype(int)
        target = targets[reference_seeds].mean(axis=-1)
        curve = curves.to_numpy()[method_seeds].mean(axis=-2)
        needed = np.array(
            [
                queries_to_reach(queries, np.concatenate([[start], c]), t)
                for c, t in zip(curve.reshape(-1, curve.shape[-1]), target.reshape(-1))
            ]
        )
        return needed.reshape(target.shape) / spent[reference_seeds].mean(axis=-1)

    with np.errstate(invalid="ignore"):  # an unreached target is inf, whose spread scipy computes too
        estimate = stratified_bootstrap_ci(
            [np.arange(len(targets), dtype=float), np.arange(len(curves), dtype=float)], fraction
        )
    needed = estimate[0] * spent.mean()
    at_target = {}
    for metric in read:
        values = split.loc[split["metric"] == metric]
        curve = values.loc[values["label"] == method].groupby("milestone")["value"].mean().to_numpy()
        start_value = values.loc[values["label"] == base, "value"].mean()
        reached = np.isfinite(needed)
        at_target[metric] = np.interp(needed, queries, np.concatenate([[start_value], curve])) if reached else math.nan
    return {
        "fraction": estimate,
        "at_target": at_target,
        "target": bootstrap_ci(targets),
        "gain": bootstrap_ci(targets - start),
        "reference_queries": spent.mean(),
        "method_queries": needed,
        "seeds": (len(curves), len(targets)),
    }


def _bound(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.3f}"


def fraction_text(value: float, low: float, high: float) -> str:
    """A fraction of a reference's compute with its interval, as `ci` writes a mean (`never`: not reached)."""
    text, bounds = _bound(value), (_bound(low), _bound(high))
    return text if bounds == (text, text) else f"{text} [{bounds[0]}, {bounds[1]}]"


def write_settings_table(results: pd.DataFrame, out: Path, name: str, title: str, settings: tuple[str, ...]) -> Path:
    """Every cell at the suite's largest budget, per reward, with the method settings the study varies (the study of a
    suite of one method's variants)."""
    final = final_budget(results)
    columns = [
        (TRAIN_SPLIT, "reward", "train reward ↑"),
        (PRIMARY_SPLIT, "reward", "reward (unseen) ↑"),
        (PRIMARY_SPLIT, "judge_acc", "judge acc (unseen) ↑"),
        (PRIMARY_SPLIT, "diversity", "diversity ↑"),
        (PRIMARY_SPLIT, "fid", "FID ↓"),
    ]
    lines = [
        f"# {title}",
        "",
        f"Budget {final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}; mean [95% bootstrap CI] over seeds. "
        f"Train reward is the proxy on the train phrasings ({TRAIN_SPLIT}); the rest are on unseen phrasings.",
    ]
    for reward, cells in final.groupby("reward"):
        lines += [
            "",
            f"## Reward: {reward}",
            "",
            "| method | " + " | ".join(settings) + " | seeds | " + " | ".join(c[2] for c in columns) + " |",
            "|---|" + "---|" * len(settings) + "---|" + "---|" * len(columns),
        ]
        for label, cell in cells.groupby("label", sort=False):
            config = json.loads(cell["config_json"].iloc[0])["method_config"]
            if config.get("divergence") == "none":
                config["beta"] = 0  # without a divergence the default beta in the config weighs nothing
            values = [str(config.get(setting, "—")) for setting in settings]
            metrics = [
                ci(cell.loc[(cell["split"] == s) & (cell["metric"] == m), "value"].to_numpy()) for s, m, _ in columns
            ]
            lines.append(
                f"| {label} | " + " | ".join(values) + f" | {cell['seed'].nunique()} | " + " | ".join(metrics) + " |"
            )
    path = out / f"{name}.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def final_budget(results: pd.DataFrame) -> pd.DataFrame:
    return results.loc[results["budget"] == results["budget"].max()]


def cell_of(results: pd.DataFrame, label: str) -> pd.DataFrame:
    """The rows of one method[/variant]@model."""
    return results.loc[results["label"] == label]


def by_seed(cell: pd.DataFrame, split: str, metric: str) -> pd.Series:
    """One value per seed, indexed by seed."""
    rows = cell.loc[(cell["split"] == split) & (cell["metric"] == metric)]
    return rows.set_index("seed")["value"].sort_index()


def step_splits(results: pd.DataFrame) -> list[tuple[int | None, str]]:
    """(steps, split) of the primary split's evaluations: (None, eval_unseen) for the default steps, then the
    `eval_unseen@<steps>` ones, by step count."""
    extra = sorted(int(s.rpartition("@")[2]) for s in results["split"].unique() if s.startswith(f"{PRIMARY_SPLIT}@"))
    splits: list[tuple[int | None, str]] = [(None, PRIMARY_SPLIT)]
    return splits + [(n, f"{PRIMARY_SPLIT}@{n}") for n in extra]


def flow_study(results: pd.DataFrame, name: str, title: str) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """A flow-model study's final results, its base@flow cells there, its reward and its table's opening lines."""
    final = final_budget(results)
    base = cell_of(final, "base@flow")
    if base.empty:
        raise ValueError(f"the {name} study needs base@flow runs: gains are measured against them")
    reward = final["reward"].iloc[0]
    lines = [
        f"# {title}",
        "",
        f"Reward `{reward}` on `{PRIMARY_SPLIT}` prompts, flow model, budget {final['budget_unit'].iloc[0]} "
        f"{final['budget'].iloc[0]:g}; mean [95% bootstrap CI] over seeds.",
        "",
    ]
    return final, base, reward, lines


def study_store(results: pd.DataFrame, out: Path) -> Path:
    """The store a study's results came from, for what else it reads there: the one bench.report names in the frame's
    attrs, or else the store.sqlite beside the study's tables."""
    return Path(results.attrs.get("store", out / "store.sqlite"))


def write_studies(runs: pd.DataFrame, results: pd.DataFrame, out_dir: Path, studies: tuple[Study, ...]) -> list[Path]:
    """The studies' tables from the leaderboard's frames (bench.standings.ranked_frames), whose `method`
    already names the variant: each row is labelled as the suites spell it, method[/variant]@model."""
    if not studies:
        return []
    configs = runs.set_index("run_id")["config_json"]
    results = results.assign(
        label=results["method"] + "@" + results["model"], config_json=results["run_id"].map(configs)
    )
    return [study(results, Path(out_dir)) for study in studies]


def write_tuning(results: pd.DataFrame, out: Path) -> Path:
    """Default and tuned side by side (tuning.md): per reward and model, each method's default and tuned score on the
    headline metric at the largest budget, the gain from tuning with its interval (each side's seeds resampled on their
    own: the tuned runs' seeds are not the default's), and the tuning compute from tuned.json; ranked by the tuned
    score. Methods with nothing to tune (base, best_of_n) show their one score."""
    from bench.experiments.suite import TUNED
    from methods import METHODS
    from worlds import world_entry

    final = final_budget(results)
    metric = world_entry(final["world"].iloc[0]).headline_metric
    from bench.experiments.suite import tuned_file

    tuned_path = tuned_file(study_store(results, out).parent)
    summaries = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    unit = final["budget_unit"].iloc[0]
    lines = [
        "# Default and tuned",
        "",
        f"`{metric}` on `{PRIMARY_SPLIT}` at {unit} {final['budget'].iloc[0]:g}, mean [95% bootstrap CI] over seeds. A "
        "tuned config is the best of its cell's trials (`make tune`: the same budget for every cell, scored on the "
        "tuning split, never on this one), run on fresh seeds; `gain` is tuned - default, each side's seeds resampled "
        f"on their own; `tuning {unit}` is what the cell's tune spent, pruned trials included.",
    ]
    for key, cells in final.groupby(["reward", "model"]):
        reward, model = key  # type: ignore[misc]
        scores = {str(label): by_seed(cell, PRIMARY_SPLIT, metric) for label, cell in cells.groupby("label")}
        rows = []
        for label, default in scores.items():
            method = label.partition("@")[0]
            if "/" in method:
                continue
            tuned = scores.get(f"{method}/{TUNED}@{model}")
            summary = summaries.get(f"{method}@{model}/{reward}")
            rows.append((method, default, tuned, summary))
        rows.sort(key=lambda row: -(row[2] if row[2] is not None else row[1]).mean())
        lines += [
            "",
            f"## Reward: {reward}, model: {model}",
            "",
            f"| method | default | tuned | gain | tuning {unit} | tuned options |",
            "|---|---|---|---|---|---|",
        ]
        for method, default, tuned, summary in rows:
            if tuned is None:
                searched = METHODS[method].trains and METHODS[method].search_space if method in METHODS else False
                said = "not tuned yet" if searched else "nothing to tune"
                lines.append(f"| {method} | {ci(default.to_numpy())} | {said} | - | - | - |")
                continue
            gain = stratified_bootstrap_ci(
                [tuned.to_numpy(), default.to_numpy()], lambda t, d, axis=-1: t.mean(axis) - d.mean(axis)
            )
            spent = f"{summary['spent']:.3g}" if summary else "?"
            options = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in (summary or {}).get("options", {}).items()
            )
            lines.append(
                f"| {method} | {ci(default.to_numpy())} | {ci(tuned.to_numpy())} | {ci(gain)} | {spent} | {options} |"
            )
        both = [(default.mean(), tuned.mean()) for _, default, tuned, _ in rows if tuned is not None]
        lines += ["", _rank_agreement(both)]
    path = out / "tuning.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _rank_agreement(pairs: list[tuple[float, float]]) -> str:
    """Whether tuning reorders the methods it tuned: Kendall's tau between their default and tuned means."""
    if len(pairs) < 3:
        return f"Rank agreement of the default and tuned orders: needs 3 tuned methods, {len(pairs)} here."
    tau = kendall_tau(pairs)
    return f"Rank agreement of the default and tuned orders ({len(pairs)} tuned methods): Kendall's tau {tau:+.2f}."
