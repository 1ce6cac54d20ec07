"""Studies: tables a suite writes beside its leaderboard to answer one question, from the store alone.

efficiency      the reward queries a method needs to reach a reference method's final reward, as a
                fraction of the reference's (ROCM vs DDPO): per seed, the method's reward-vs-queries curve
                over the milestones (starting from the base model at 0 queries) is interpolated linearly
                to the first point where it reaches the same seed's reference final reward.
regularization  every variant of a method at the suite's largest budget: train reward (the proxy on
                train phrasings), judge accuracy on unseen phrasings, diversity and FID, by divergence x beta.
Seeds give 95% bootstrap intervals (bench/stats.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import bootstrap_ci
from bench.store import Store
from models.io import atomic_write_bytes

PRIMARY_SPLIT = "eval_unseen"
TRAIN_SPLIT = "eval_seen"


def _label(frame: pd.DataFrame) -> pd.Series:
    variant = frame["variant"].where(frame["variant"] == "", "/" + frame["variant"])
    return frame["method"] + variant + "@" + frame["model"]


def _ci(values) -> str:
    mean, lo, hi = bootstrap_ci(values)
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
    """Per seed, the queries `method` needs to reach `reference`'s final reward, over the reference's."""
    ours = results[(results["reward"] == reward) & (results["split"] == PRIMARY_SPLIT) & (results["metric"] == "reward")]
    base_reward = ours[ours["label"] == base]["value"]
    if base_reward.empty:
        raise ValueError(f"the efficiency study needs {base} runs for the reward at 0 queries")
    ratios, reached = {}, {}
    for seed, runs in ours[ours["label"] == reference].groupby("seed"):
        final = runs[runs["milestone"] == runs["milestone"].max()].iloc[0]
        curve = ours[(ours["label"] == method) & (ours["seed"] == seed)].sort_values("milestone")
        if curve.empty:
            continue
        queries = np.concatenate([[0.0], curve["reward_queries"].to_numpy()])
        rewards = np.concatenate([[base_reward.mean()], curve["value"].to_numpy()])
        needed = queries_to_reach(queries, rewards, final["value"])
        ratios[int(seed)] = needed / final["reward_queries"]
        reached[int(seed)] = (final["value"], final["value"] - rewards[0], final["reward_queries"], needed)
    return {"ratios": ratios, "reached": reached}


def write_efficiency(results: pd.DataFrame, out: Path) -> Path:
    lines = ["# Efficiency: reward queries to reach a reference's final reward", "",
             f"Reward `digit` on `{PRIMARY_SPLIT}` prompts. Per seed, the target is the reference's mean reward at "
             "its final milestone; the method's milestone curve (from the base model at 0 queries) is interpolated "
             "to the first point reaching it. The fraction is the method's queries over the reference's; "
             "mean [95% bootstrap CI] over seeds, `inf` where the target was never reached. A reference that ends "
             "below the base model (gain over base < 0) is reached at 0 queries: read the gain column first.", "",
             "| method | reference | seeds | target reward | reference gain over base | reference queries | "
             "method queries | fraction of reference |",
             "|---|---|---|---|---|---|---|---|"]
    for method, reference in (("rocm@consistency", "ddpo@consistency"), ("rocm@consistency", "ddpo@diffusion")):
        study = efficiency(results, method, reference, base="base@consistency", reward="digit")
        if not study["ratios"]:
            continue
        ratios = np.array(list(study["ratios"].values()))
        targets, gains, ref_queries, needed = (np.array(v) for v in zip(*study["reached"].values()))
        finite = np.isfinite(ratios)
        fraction = _ci(ratios) if finite.all() else f"inf for {int((~finite).sum())} of {len(ratios)} seeds"
        spent = _ci(needed) if finite.all() else "—"
        lines.append(f"| {method} | {reference} | {len(ratios)} | {_ci(targets)} | {_ci(gains)} | {_ci(ref_queries)} | "
                     f"{spent} | {fraction} |")
    path = out / "efficiency.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_regularization(results: pd.DataFrame, out: Path) -> Path:
    final = results[results["budget"] == results["budget"].max()]
    columns = [(TRAIN_SPLIT, "reward", "train reward ↑"), (PRIMARY_SPLIT, "reward", "reward (unseen) ↑"),
               (PRIMARY_SPLIT, "judge_acc", "judge acc (unseen) ↑"), (PRIMARY_SPLIT, "diversity", "diversity ↑"),
               (PRIMARY_SPLIT, "fid", "FID ↓")]
    lines = ["# Regularization: divergence x beta at the largest budget", "",
             f"Budget {final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}; mean [95% bootstrap CI] over seeds. "
             f"Train reward is the proxy on the train phrasings ({TRAIN_SPLIT}); the rest are on unseen phrasings.", "",
             "| method | divergence | beta | seeds | " + " | ".join(c[2] for c in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for label, cell in final.groupby("label", sort=False):
        config = json.loads(cell["config_json"].iloc[0])["method_config"]
        divergence, beta = config.get("divergence", "—"), config.get("beta", "—")
        if divergence == "none":
            beta = 0
        cells = [_ci(cell[(cell["split"] == s) & (cell["metric"] == m)]["value"].to_numpy()) for s, m, _ in columns]
        lines.append(f"| {label} | {divergence} | {beta} | {cell['seed'].nunique()} | " + " | ".join(cells) + " |")
    path = out / "regularization.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


STUDIES = {"efficiency": write_efficiency, "regularization": write_regularization}


def write_studies(store: Store, out_dir: Path, studies: tuple[str, ...]) -> list[Path]:
    if not studies:
        return []
    results = store.results_frame()
    runs = store.runs_frame().set_index("run_id")
    results = results.assign(label=_label(results), config_json=results["run_id"].map(runs["config_json"]))
    return [STUDIES[name](results, Path(out_dir)) for name in studies]
