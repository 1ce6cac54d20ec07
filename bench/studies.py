"""Studies: tables a suite writes beside its leaderboard to answer one question, from the store alone.

efficiency      the reward queries a method needs to reach a reference method's final reward, as a
                fraction of the reference's (ROCM vs DDPO): the method's mean reward-vs-queries curve over
                the milestones (starting from the base model at 0 queries) is interpolated linearly to the
                first point where it reaches the reference's final mean reward.
regularization  every variant of a method at the suite's largest budget: train reward (the proxy on
                train phrasings), judge accuracy on unseen phrasings, diversity and FID, by divergence x beta.
alpha           the same table by the W2 bound's weight alpha (ORW-CFM-W2), per reward.
Seeds give 95% bootstrap intervals (bench/stats.py).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import bootstrap_ci, stratified_bootstrap_ci
from models.io import atomic_write_bytes

PRIMARY_SPLIT = "eval_unseen"
TRAIN_SPLIT = "eval_seen"


def _ci(values) -> str:
    mean, lo, hi = values if isinstance(values, tuple) else bootstrap_ci(values)
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def queries_to_reach(queries: np.ndarray, rewards: np.ndarray, target: float) -> float:
    """The first (linearly interpolated) x at which the curve (queries, rewards) reaches `target`,
    or inf if it never does. queries: increasing (N,), starting at the base model's 0."""
    for i in range(len(queries)):
        if rewards[i] >= target:
            if i == 0:
                return float(queries[0])
            fraction = (target - rewards[i - 1]) / (rewards[i] - rewards[i - 1])
            return float(queries[i - 1] + fraction * (queries[i] - queries[i - 1]))
    return math.inf


def efficiency(results: pd.DataFrame, method: str, reference: str, base: str, reward: str) -> dict:
    """The queries `method` needs for its mean reward curve over seeds to reach `reference`'s final mean reward,
    as a fraction of the reference's queries, with a bootstrap interval that resamples each method's seeds
    (seed i of one method has nothing to do with seed i of the other). None if either has no runs."""
    ours = results[(results["reward"] == reward) & (results["split"] == PRIMARY_SPLIT) & (results["metric"] == "reward")]
    base_reward = ours[ours["label"] == base]["value"]
    if base_reward.empty:
        raise ValueError(f"the efficiency study needs {base} runs for the reward at 0 queries")
    start = base_reward.mean()
    finals = ours[ours["label"] == reference].sort_values("milestone").groupby("seed").last()
    curves = ours[ours["label"] == method].pivot_table(index="seed", columns="milestone", values="value")
    if finals.empty or curves.empty:
        return None
    queries = np.concatenate([[0.0], ours[ours["label"] == method].groupby("milestone")["reward_queries"].mean()])
    targets, spent = finals["value"].to_numpy(), finals["reward_queries"].to_numpy()

    def fraction(reference_seeds: np.ndarray, method_seeds: np.ndarray, axis: int = -1) -> np.ndarray:
        # arguments are (resamples of) seed indices, so that both seed sets are resampled on their own
        reference_seeds, method_seeds = reference_seeds.astype(int), method_seeds.astype(int)
        target = targets[reference_seeds].mean(axis=-1)
        curve = curves.to_numpy()[method_seeds].mean(axis=-2)
        needed = np.array([queries_to_reach(queries, np.concatenate([[start], c]), t)
                           for c, t in zip(curve.reshape(-1, curve.shape[-1]), target.reshape(-1))])
        return needed.reshape(target.shape) / spent[reference_seeds].mean(axis=-1)

    with np.errstate(invalid="ignore"):  # an unreached target is inf, whose spread scipy computes too
        estimate = stratified_bootstrap_ci([np.arange(len(targets), dtype=float),
                                            np.arange(len(curves), dtype=float)], fraction)
    return {"fraction": estimate, "target": bootstrap_ci(targets), "gain": bootstrap_ci(targets - start),
            "reference_queries": spent.mean(), "method_queries": estimate[0] * spent.mean(),
            "seeds": (len(curves), len(targets))}


def _bound(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.3f}"


def write_efficiency(results: pd.DataFrame, out: Path) -> Path:
    base = "base@consistency"
    lines = ["# Efficiency: reward queries to reach a reference's final reward", "",
             f"Reward `digit` on `{PRIMARY_SPLIT}` prompts. The target is the reference's final reward, averaged over "
             f"its seeds; the method's reward curve, averaged over its seeds over the milestones and starting from "
             f"{base} at 0 queries, is interpolated to the first point reaching it. The fraction is the queries that "
             "takes over the reference's: the estimate from all seeds, and a 95% bootstrap interval resampling each "
             "method's seeds on its own (`never`: not reached within the method's budget in that resample). A target "
             f"at or below the start (target gain over {base} <= 0) is reached at 0 queries.", "",
             f"| method | reference | seeds (method, reference) | target reward | target gain over {base} | "
             "reference queries | method queries | fraction of reference [95% CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for method, reference in (("rocm@consistency", "ddpo@consistency"), ("rocm@consistency", "ddpo@diffusion")):
        study = efficiency(results, method, reference, base=base, reward="digit")
        if study is None:
            continue
        fraction, low, high = study["fraction"]
        queries = "never" if math.isinf(study["method_queries"]) else f"{study['method_queries']:.0f}"
        lines.append(f"| {method} | {reference} | {study['seeds'][0]}, {study['seeds'][1]} | "
                     f"{_ci(study['target'])} | {_ci(study['gain'])} | {study['reference_queries']:.0f} | {queries} | "
                     f"{_bound(fraction)} [{_bound(low)}, {_bound(high)}] |")
    path = out / "efficiency.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_settings_table(results: pd.DataFrame, out: Path, name: str, title: str, settings: tuple[str, ...]) -> Path:
    """Every cell at the suite's largest budget, per reward, with the method settings the study varies."""
    final = results[results["budget"] == results["budget"].max()]
    columns = [(TRAIN_SPLIT, "reward", "train reward ↑"), (PRIMARY_SPLIT, "reward", "reward (unseen) ↑"),
               (PRIMARY_SPLIT, "judge_acc", "judge acc (unseen) ↑"), (PRIMARY_SPLIT, "diversity", "diversity ↑"),
               (PRIMARY_SPLIT, "fid", "FID ↓")]
    lines = [f"# {title}", "",
             f"Budget {final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}; mean [95% bootstrap CI] over seeds. "
             f"Train reward is the proxy on the train phrasings ({TRAIN_SPLIT}); the rest are on unseen phrasings."]
    for reward, cells in final.groupby("reward"):
        lines += ["", f"## Reward: {reward}", "",
                  "| method | " + " | ".join(settings) + " | seeds | " + " | ".join(c[2] for c in columns) + " |",
                  "|---|" + "---|" * len(settings) + "---|" + "---|" * len(columns)]
        for label, cell in cells.groupby("label", sort=False):
            config = json.loads(cell["config_json"].iloc[0])["method_config"]
            if config.get("divergence") == "none":
                config["beta"] = 0  # without a divergence the default beta in the config weighs nothing
            values = [str(config.get(setting, "—")) for setting in settings]
            metrics = [_ci(cell[(cell["split"] == s) & (cell["metric"] == m)]["value"].to_numpy()) for s, m, _ in columns]
            lines.append(f"| {label} | " + " | ".join(values) + f" | {cell['seed'].nunique()} | " + " | ".join(metrics) + " |")
    path = out / f"{name}.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


STUDIES = {
    "efficiency": write_efficiency,
    "regularization": functools.partial(write_settings_table, name="regularization", settings=("divergence", "beta"),
                                        title="Regularization: divergence x beta at the largest budget"),
    "alpha": functools.partial(write_settings_table, name="alpha", settings=("alpha",),
                               title="The W2 bound's weight alpha at the largest budget"),
}


def write_studies(runs: pd.DataFrame, results: pd.DataFrame, out_dir: Path, studies: tuple[str, ...]) -> list[Path]:
    """The studies' tables from the leaderboard's frames (bench.leaderboard.ranked_frames), whose `method`
    already names the variant: each row is labelled as the suites spell it, method[/variant]@model."""
    if not studies:
        return []
    configs = runs.set_index("run_id")["config_json"]
    results = results.assign(label=results["method"] + "@" + results["model"], config_json=results["run_id"].map(configs))
    return [STUDIES[name](results, Path(out_dir)) for name in studies]
