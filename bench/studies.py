"""Studies: tables a suite writes beside its leaderboard to answer one question, from the store alone.

efficiency      the reward queries a method needs to reach a reference method's final reward, as a
                fraction of the reference's (ROCM vs DDPO): the method's mean reward-vs-queries curve over
                the milestones (starting from the base model at 0 queries) is interpolated linearly to the
                first point where it reaches the reference's final mean reward.
regularization  every variant of a method at the suite's largest budget: train reward (the proxy on
                train phrasings), judge accuracy on unseen phrasings, diversity and FID, by divergence x beta.
alpha           the same table by the W2 bound's weight alpha (ORW-CFM-W2), per reward.
discretization  the reward gain kept when a method is evaluated with other sampler steps than it trained with.
preference_budget  learning from feedback by the number of preference pairs.
direct          the direct-gradient and likelihood-free families' claims: DiffusionNFT's and DRaFT-1's efficiency, and
                the judge at equal reward (over-optimization).
families        GenEval's table in miniature (the compositional world): the judge's score per prompt family, the
                reward reader's excess over it (hacking), and base -> best with whether the intervals separate.
grpo            the GRPO family's claims: MixGRPO's and MixGRPO-Flash's speed (the efficiency measure over wall
                seconds and NFE), Flow-GRPO's denoising reduction, and whether its KL or GRPO-Guard holds the judge
                while the proxy rises.
Seeds give 95% bootstrap intervals (bench/stats.py).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from bench.leaderboard import interval
from bench.stats import bootstrap_ci, stratified_bootstrap_ci
from models.digits import GENERATORS
from models.io import atomic_write_bytes
from models.scene_rules import FAMILIES

PRIMARY_SPLIT = "eval_unseen"
TRAIN_SPLIT = "eval_seen"


def _ci(values) -> str:
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
    results: pd.DataFrame, method: str, reference: str, base: str, reward: str, spent_on: str = "reward_queries"
) -> dict | None:
    """The compute `spent_on` (reward_queries, nfe, wall_s) that `method` needs for its mean reward curve over seeds
    to reach `reference`'s final mean reward, as a fraction of the reference's, with a bootstrap interval that
    resamples each method's seeds (seed i of one method has nothing to do with seed i of the other). None if either
    has no runs."""
    ours = results[
        (results["reward"] == reward) & (results["split"] == PRIMARY_SPLIT) & (results["metric"] == "reward")
    ]
    base_reward = ours[ours["label"] == base]["value"]
    if base_reward.empty:
        raise ValueError(f"the efficiency study needs {base} runs for the reward at 0 queries")
    start = base_reward.mean()
    finals = ours[ours["label"] == reference].sort_values("milestone").groupby("seed").last()
    curves = ours[ours["label"] == method].pivot_table(index="seed", columns="milestone", values="value")
    if finals.empty or curves.empty:
        return None
    queries = np.concatenate([[0.0], ours[ours["label"] == method].groupby("milestone")[spent_on].mean()])
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
    return {
        "fraction": estimate,
        "target": bootstrap_ci(targets),
        "gain": bootstrap_ci(targets - start),
        "reference_queries": spent.mean(),
        "method_queries": estimate[0] * spent.mean(),
        "seeds": (len(curves), len(targets)),
    }


def _bound(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.3f}"


def _fraction(value: float, low: float, high: float) -> str:
    """A fraction of a reference's compute with its interval, as `_ci` writes a mean (`never`: not reached)."""
    text, bounds = _bound(value), (_bound(low), _bound(high))
    return text if bounds == (text, text) else f"{text} [{bounds[0]}, {bounds[1]}]"


def write_efficiency(results: pd.DataFrame, out: Path) -> Path:
    base = "base@consistency"
    lines = [
        "# Efficiency: reward queries to reach a reference's final reward",
        "",
        f"Reward `digit` on `{PRIMARY_SPLIT}` prompts. The target is the reference's final reward, averaged over "
        f"its seeds; the method's reward curve, averaged over its seeds over the milestones and starting from "
        f"{base} at 0 queries, is interpolated to the first point reaching it. The fraction is the queries that "
        "takes over the reference's: the estimate from all seeds, and a 95% bootstrap interval resampling each "
        "method's seeds on its own (`never`: not reached within the method's budget in that resample). A target "
        f"at or below the start (target gain over {base} <= 0) is reached at 0 queries.",
        "",
        f"| method | reference | seeds (method, reference) | target reward | target gain over {base} | "
        "reference queries | method queries | fraction of reference [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, reference in (("rocm@consistency", "ddpo@consistency"), ("rocm@consistency", "ddpo@diffusion")):
        study = efficiency(results, method, reference, base=base, reward="digit")
        if study is None:
            continue
        fraction, low, high = study["fraction"]
        queries = "never" if math.isinf(study["method_queries"]) else f"{study['method_queries']:.0f}"
        lines.append(
            f"| {method} | {reference} | {study['seeds'][0]}, {study['seeds'][1]} | "
            f"{_ci(study['target'])} | {_ci(study['gain'])} | {study['reference_queries']:.0f} | {queries} | "
            f"{_fraction(fraction, low, high)} |"
        )
    path = out / "efficiency.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_settings_table(results: pd.DataFrame, out: Path, name: str, title: str, settings: tuple[str, ...]) -> Path:
    """Every cell at the suite's largest budget, per reward, with the method settings the study varies."""
    final = results[results["budget"] == results["budget"].max()]
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
                _ci(cell[(cell["split"] == s) & (cell["metric"] == m)]["value"].to_numpy()) for s, m, _ in columns
            ]
            lines.append(
                f"| {label} | " + " | ".join(values) + f" | {cell['seed'].nunique()} | " + " | ".join(metrics) + " |"
            )
    path = out / f"{name}.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _final(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["budget"] == results["budget"].max()]


def _cell(results: pd.DataFrame, label: str) -> pd.DataFrame:
    """The rows of one method[/variant]@model."""
    return cast(pd.DataFrame, results[results["label"] == label])


def _values(cell: pd.DataFrame, split: str, metric: str) -> pd.Series:
    """One value per seed, indexed by seed."""
    rows = cell[(cell["split"] == split) & (cell["metric"] == metric)]
    return rows.set_index("seed")["value"].sort_index()


def _step_splits(results: pd.DataFrame) -> list[tuple[int | None, str]]:
    """(steps, split) of the primary split's evaluations: (None, eval_unseen) for the default steps, then the
    `eval_unseen@<steps>` ones, by step count."""
    extra = sorted(int(s.rpartition("@")[2]) for s in results["split"].unique() if s.startswith(f"{PRIMARY_SPLIT}@"))
    return [(None, PRIMARY_SPLIT)] + [(n, f"{PRIMARY_SPLIT}@{n}") for n in extra]


def write_discretization(results: pd.DataFrame, out: Path) -> Path:
    final = _final(results)
    base_label = "base@diffusion"
    base = final[final["label"] == base_label]
    if base.empty:
        raise ValueError(f"the discretization study needs {base_label} runs: gains are measured against them")
    trained = final[final["label"] != base_label]
    trained_steps = (
        json.loads(trained["config_json"].iloc[0])["eval"].get("steps")
        or GENERATORS[trained["model"].iloc[0]][1].default_steps
    )
    splits = _step_splits(final)
    names = [f"{n} steps" if n else f"{trained_steps} steps (trained)" for n, _ in splits]
    lines = [
        "# Discretization: the reward gain kept with other sampler steps",
        "",
        f"Reward `{final['reward'].iloc[0]}` on `{PRIMARY_SPLIT}` prompts, budget {final['budget_unit'].iloc[0]} "
        f"{final['budget'].iloc[0]:g}. Each method trains with the model's {trained_steps} sampler steps and is "
        "evaluated with its deterministic sampler at each step count; the gain is its reward minus the base "
        f"model's with the same steps, and 'kept' is the gain at that count over the gain at {trained_steps} "
        "steps (1: all of it). Mean [95% bootstrap CI] over seeds; kept resamples seeds, pairing each seed's "
        "two gains.",
        "",
        "| method | seeds | "
        + " | ".join(f"gain, {n} ↑" for n in names)
        + " | "
        + " | ".join(f"kept, {n} ↑" for (steps, _), n in zip(splits, names) if steps)
        + " | "
        + " | ".join(f"judge acc, {n} ↑" for n in names)
        + " |",
        "|---|---|" + "---|" * (3 * len(splits) - 1),
    ]
    for label, cell in final[final["label"] != base_label].groupby("label", sort=False):
        gains = {split: _values(cell, split, "reward") - _values(base, split, "reward").mean() for _, split in splits}
        trained = gains[PRIMARY_SPLIT].to_numpy()
        kept = []
        for steps, split in splits:
            if steps is None:
                continue
            other = gains[split].to_numpy()

            def share(seeds, axis=-1, other=other, trained=trained):
                seeds = seeds.astype(int)
                return other[seeds].mean(axis=axis) / trained[seeds].mean(axis=axis)

            kept.append(_ci(bootstrap_ci(np.arange(len(trained), dtype=float), share)))
        judge = [_ci(_values(cell, split, "judge_acc").to_numpy()) for _, split in splits]
        lines.append(
            f"| {label} | {cell['seed'].nunique()} | "
            + " | ".join(_ci(g.to_numpy()) for g in gains.values())
            + " | "
            + " | ".join(kept)
            + " | "
            + " | ".join(judge)
            + " |"
        )
    base_row = [_ci(_values(base, split, "judge_acc").to_numpy()) for _, split in splits]
    lines += ["", "The base model's judge accuracy: " + ", ".join(f"{n}: {v}" for n, v in zip(names, base_row)) + "."]
    path = out / "discretization.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_preference_budget(results: pd.DataFrame, out: Path) -> Path:
    final = _final(results)
    columns = [
        ("reward", "hidden reward ↑"),
        ("judge_acc", "judge acc ↑"),
        ("diversity", "diversity ↑"),
        ("fid", "FID ↓"),
    ]
    budgets = {
        label: json.loads(cell["config_json"].iloc[0])["method_config"].get("preference_pairs")
        for label, cell in final.groupby("label")
    }
    lines = [
        "# Learning from feedback: by preference budget",
        "",
        f"The annotator holds the hidden reward `{final['reward'].iloc[0]}`; methods see only its preference labels "
        f"(Bradley-Terry) and demonstrations. Unseen phrasings (`{PRIMARY_SPLIT}`), budget "
        f"{final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}, mean [95% bootstrap CI] over seeds. "
        "Methods without a preference budget (the base model, sft) use no labels and are listed once.",
        "",
        "| preference pairs | method | seeds | labels used | " + " | ".join(c[1] for c in columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    order = sorted(budgets, key=lambda label: (budgets[label] is not None, budgets[label] or 0, label))
    for label in order:
        cell = final[final["label"] == label]
        metrics = [_ci(_values(cell, PRIMARY_SPLIT, metric).to_numpy()) for metric, _ in columns]
        pairs = budgets[label] if budgets[label] is not None else "—"
        lines.append(
            f"| {pairs} | {label} | {cell['seed'].nunique()} | {cell['labels'].mean():g} | "
            + " | ".join(metrics)
            + " |"
        )
    path = out / "preference_budget.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _flow_study(results: pd.DataFrame, name: str, title: str) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """A flow-model study's final results, its base@flow cells there, its reward and its table's opening lines."""
    final = _final(results)
    base = _cell(final, "base@flow")
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


GRPO_SPEED = (
    ("mix_grpo@flow", "flow_grpo@flow"),
    ("mix_grpo@flow", "dance_grpo@flow"),
    ("dance_grpo@flow", "flow_grpo@flow"),
    ("mix_grpo/flash@flow", "mix_grpo@flow"),
    ("mix_grpo/flash@flow", "dance_grpo@flow"),
)


def write_grpo(results: pd.DataFrame, out: Path) -> Path:
    """The GRPO family's claims, measured: MixGRPO's speed, Flow-GRPO's denoising reduction and its KL."""
    final, base, reward, lines = _flow_study(results, "grpo", "The GRPO family's claims")
    base_label = "base@flow"
    lines += [
        "## Speed: the compute to reach another method's final reward",
        "",
        "MixGRPO claims Flow-GRPO's and DanceGRPO's final reward in about half their training time, and "
        "MixGRPO-Flash (`mix_grpo/flash`: fewer ODE steps after the window) a further cut. The method's "
        "mean reward curve over the milestones (from the base model at 0) is interpolated to the first point "
        "reaching the reference's final mean reward; the fraction is that compute over the reference's (1: as "
        "fast; `never`: not reached within the budget). Wall seconds are training time, every run on one thread.",
        "",
        "| method | reference | fraction of the wall seconds [95% CI] | fraction of the NFE [95% CI] | target reward |",
        "|---|---|---|---|---|",
    ]
    for method, reference in GRPO_SPEED:
        wall = efficiency(results, method, reference, base_label, reward, "wall_s")
        nfe = efficiency(results, method, reference, base_label, reward, "nfe")
        if wall is None or nfe is None:
            continue
        fractions = [_fraction(*estimate) for estimate in (wall["fraction"], nfe["fraction"])]
        lines.append(f"| {method} | {reference} | {fractions[0]} | {fractions[1]} | {_ci(wall['target'])} |")
    lines += [
        "",
        "## Denoising reduction: training with fewer steps than evaluation",
        "",
        "Flow-GRPO samples its training chains with 10 steps and is evaluated with the model's default; "
        "`flow_grpo/train-20` trains with the default steps too. The gain is the reward minus the base model's "
        "with the same evaluation steps.",
        "",
        "| method | gain at the default steps ↑ | gain at 10 steps ↑ | judge acc ↑ | training wall s |",
        "|---|---|---|---|---|",
    ]
    steps = [split for _, split in _step_splits(final)]
    for label in ("flow_grpo@flow", "flow_grpo/train-20@flow"):
        cell = _cell(final, label)
        if cell.empty:
            continue
        gains = [
            _ci((_values(cell, split, "reward") - _values(base, split, "reward").mean()).to_numpy()) for split in steps
        ]
        gains += ["—"] * (2 - len(gains))
        judge = _ci(_values(cell, PRIMARY_SPLIT, "judge_acc").to_numpy())
        lines.append(f"| {label} | {gains[0]} | {gains[1]} | {judge} | {cell['wall_s'].mean():.0f} |")
    lines += [
        "",
        "## The KL to the base model, or GRPO-Guard: does it hold the judge while the proxy rises?",
        "",
        "`flow_grpo` has Flow-GRPO's KL (beta 0.04), `flow_grpo/no-kl` none, and `flow_grpo/guard` GRPO-Guard's "
        "regulated ratio instead of the KL. The proxy is the trained reward on "
        f"the train phrasings (`{TRAIN_SPLIT}`); the judge's accuracy, diversity and FID are on unseen phrasings.",
        "",
        "| method | proxy reward ↑ | judge acc ↑ | diversity ↑ | FID ↓ |",
        "|---|---|---|---|---|",
    ]
    for label in (base_label, "flow_grpo@flow", "flow_grpo/no-kl@flow", "flow_grpo/guard@flow"):
        cell = _cell(final, label)
        if cell.empty:
            continue
        values = [_values(cell, TRAIN_SPLIT, "reward")] + [
            _values(cell, PRIMARY_SPLIT, metric) for metric in ("judge_acc", "diversity", "fid")
        ]
        lines.append(f"| {label} | " + " | ".join(_ci(v.to_numpy()) for v in values) + " |")
    path = out / "grpo.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


DIRECT_SPEED = (
    ("diffusion_nft@flow", "flow_grpo@flow"),
    ("draft@flow", "draft/full@flow"),
    ("draft@flow", "alignprop@flow"),
    ("draft/lv@flow", "draft@flow"),
    ("refl@flow", "draft@flow"),
    ("adjoint_matching@flow", "draft@flow"),
    ("draft@flow", "ddpo@flow"),
    ("draft@consistency", "rocm@consistency"),
)
COMPUTE_AXES = ("reward_queries", "nfe", "wall_s")


def judge_at_reward(cell: pd.DataFrame, start: tuple[float, float], level: float) -> float:
    """The judge's accuracy where a method's mean curve of (reward, judge) over the milestones, from the base
    model's `start` at 0, first reaches reward `level` (linear interpolation); NaN if it never does."""
    curve = cell[cell["split"] == PRIMARY_SPLIT].pivot_table(index="milestone", columns="metric", values="value")
    rewards = np.concatenate([[start[0]], curve["reward"].to_numpy()])
    judges = np.concatenate([[start[1]], curve["judge_acc"].to_numpy()])
    for i in range(1, len(rewards)):
        if rewards[i] >= level:
            share = (level - rewards[i - 1]) / (rewards[i] - rewards[i - 1]) if rewards[i] > rewards[i - 1] else 1.0
            return float(judges[i - 1] + share * (judges[i] - judges[i - 1]))
    return math.nan


def write_direct(results: pd.DataFrame, out: Path) -> Path:
    """The direct-gradient and likelihood-free families' claims, measured: DiffusionNFT's efficiency against
    Flow-GRPO, DRaFT-1's against full backpropagation, and which family over-optimizes least at equal reward."""
    final, base, reward, lines = _flow_study(
        results, "direct", "Direct reward gradients and likelihood-free RL against the policy gradients"
    )
    base_label = "base@flow"
    lines += [
        "## Efficiency: the compute to reach another method's final reward",
        "",
        "DiffusionNFT claims Flow-GRPO's reward with several (up to 25) times less compute; DRaFT claims DRaFT-1 "
        "beats full backpropagation (`draft/full`, K = T) per reward query. The method's mean reward curve over the "
        "milestones (from the base model at 0) is interpolated to the first point reaching the reference's final mean "
        "reward; the fraction is that compute over the reference's (below 1: faster; `never`: not reached within the "
        "budget). Each model's curve starts from its own base.",
        "",
        "| method | reference | fraction of the reward queries | fraction of the NFE | fraction of the wall seconds "
        "| target reward |",
        "|---|---|---|---|---|---|",
    ]
    for method, reference in DIRECT_SPEED:
        start = "base@" + method.rpartition("@")[2]
        if _cell(results, start).empty:
            continue
        estimates = [efficiency(results, method, reference, start, reward, axis) for axis in COMPUTE_AXES]
        found = [estimate for estimate in estimates if estimate is not None]
        if len(found) < len(estimates):
            continue
        fractions = " | ".join(_fraction(*estimate["fraction"]) for estimate in found)
        lines.append(f"| {method} | {reference} | {fractions} | {_ci(found[0]['target'])} |")
    start_values = (_values(base, PRIMARY_SPLIT, "reward").mean(), _values(base, PRIMARY_SPLIT, "judge_acc").mean())
    flow_labels = sorted(label for label in final["label"].unique() if label.endswith("@flow") and label != base_label)
    finals = {label: _values(_cell(final, label), PRIMARY_SPLIT, "reward").mean() for label in flow_labels}
    gaining = sorted(value for value in finals.values() if value > start_values[0])
    # two levels: the lowest final reward of the methods that gained (every one of them passes it) and their median
    # (half of them pass it), where the methods that push the reward furthest show what their gain is made of
    levels = (gaining[0], float(np.median(gaining))) if gaining else (math.nan, math.nan)
    lines += [
        "",
        "## Over-optimization: the judge at equal reward",
        "",
        f"Each flow method's mean curve of (reward, judge accuracy) over the milestones, from the base model's "
        f"({start_values[0]:.3f}, {start_values[1]:.3f}), read where it first reaches a reward level: "
        f"{levels[0]:.3f}, the lowest final reward among the methods that gained (every one of them passes it), and "
        f"{levels[1]:.3f}, their median (`—`: not reached). At equal reward, a lower judge is more of the gain bought "
        "by hacking the reward rather than drawing the prompted digit better (on `gold`, whose ink term rewards bold "
        "strokes whatever they draw, that is ink bought with correctness). The final columns are at the full "
        "budget.",
        "",
        f"| method | judge acc at reward {levels[0]:.3f} ↑ | judge acc at reward {levels[1]:.3f} ↑ | final reward ↑ "
        "| final judge acc ↑ | final diversity ↑ | final FID ↓ |",
        "|---|---|---|---|---|---|---|",
    ]

    judges = {
        label: [judge_at_reward(_cell(results, label), start_values, level) for level in levels]
        for label in flow_labels
    }
    # best judge at the higher level first (those that never reach it after), then at the lower one
    for label in sorted(flow_labels, key=lambda label: [-(-1.0 if math.isnan(j) else j) for j in judges[label][::-1]]):
        cell = _cell(final, label)
        shown = ["—" if math.isnan(j) else f"{j:.3f}" for j in judges[label]]
        values = [_values(cell, PRIMARY_SPLIT, metric) for metric in ("reward", "judge_acc", "diversity", "fid")]
        lines.append(f"| {label} | {' | '.join(shown)} | " + " | ".join(_ci(v.to_numpy()) for v in values) + " |")
    path = out / "direct.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_families(results: pd.DataFrame, out: Path) -> Path:
    """GenEval's table in miniature (the compositional world): per reward and model, every cell at the largest budget
    with the judge's score per prompt family on held-out combinations, the overall score, the rewards' reader's
    overall score and its excess over the judge's (reward hacking); then base -> best on the overall score and on
    text rendering, and whether the best method's interval separates from the runner-up's."""
    final = _final(results)
    family_columns = [f"judge_{family}" for family in FAMILIES]
    lines = [
        "# Prompt families: GenEval and OCR in miniature",
        "",
        f"Budget {final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}, on `{PRIMARY_SPLIT}` prompts "
        "(combinations no train prompt has); mean [95% bootstrap CI] over seeds. Each family's score is the "
        "fraction of its images whose judge reading satisfies the prompt; `overall` is their mean (GenEval's score, "
        "text rendering as a seventh task). `reader` is the same overall score as the rewards' reader reads the "
        "images, and `reader - judge` its excess (per seed): a method that raises it satisfies the reward's reader, "
        "not the prompt.",
    ]
    for key, cells in final.groupby(["reward", "model"]):
        reward, model = cast(tuple, key)
        lines += [
            "",
            f"## Reward: {reward}, model: {model}",
            "",
            "| method | seeds | overall ↑ | " + " | ".join(FAMILIES) + " | reader ↑ | reader - judge ↓ |",
            "|---|---|---|" + "---|" * len(FAMILIES) + "---|---|",
        ]
        overall = {str(label): _values(cell, PRIMARY_SPLIT, "judge_score") for label, cell in cells.groupby("label")}
        base = next((label for label in overall if label.startswith("base@")), None)
        trained = sorted((label for label in overall if label != base), key=lambda k: -overall[k].mean())
        for label in [base, *trained] if base else trained:
            cell = _cell(cells, label)
            reader = _values(cell, PRIMARY_SPLIT, "reader_score")
            values = [_ci(_values(cell, PRIMARY_SPLIT, m).to_numpy()) for m in family_columns]
            lines.append(
                f"| {label} | {cell['seed'].nunique()} | {_ci(overall[label].to_numpy())} | "
                + " | ".join(values)
                + f" | {_ci(reader.to_numpy())} | {_ci((reader - overall[label]).to_numpy())} |"
            )
        if base is None or not trained:
            continue
        lines.append("")
        for metric, name in (("judge_score", "overall"), ("judge_ocr", "ocr")):
            per_method = {label: _values(_cell(cells, label), PRIMARY_SPLIT, metric) for label in overall}
            best, *rest = sorted(trained, key=lambda k: -per_method[k].mean())
            text = f"- {name}: {base} {_ci(per_method[base].to_numpy())} -> {best} {_ci(per_method[best].to_numpy())}"
            if rest:
                separated = bootstrap_ci(per_method[best].tolist())[1] > bootstrap_ci(per_method[rest[0]].tolist())[2]
                text += f"; the runner-up, {rest[0]}, {_ci(per_method[rest[0]].to_numpy())}: the intervals " + (
                    "separate" if separated else "overlap"
                )
            lines.append(text)
    path = out / "families.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


STUDIES = {
    "efficiency": write_efficiency,
    "regularization": functools.partial(
        write_settings_table,
        name="regularization",
        settings=("divergence", "beta"),
        title="Regularization: divergence x beta at the largest budget",
    ),
    "alpha": functools.partial(
        write_settings_table,
        name="alpha",
        settings=("alpha",),
        title="The W2 bound's weight alpha at the largest budget",
    ),
    "discretization": write_discretization,
    "preference_budget": write_preference_budget,
    "grpo": write_grpo,
    "direct": write_direct,
    "families": write_families,
}


def write_studies(runs: pd.DataFrame, results: pd.DataFrame, out_dir: Path, studies: tuple[str, ...]) -> list[Path]:
    """The studies' tables from the leaderboard's frames (bench.leaderboard.ranked_frames), whose `method`
    already names the variant: each row is labelled as the suites spell it, method[/variant]@model."""
    if not studies:
        return []
    configs = runs.set_index("run_id")["config_json"]
    results = results.assign(
        label=results["method"] + "@" + results["model"], config_json=results["run_id"].map(configs)
    )
    return [STUDIES[name](results, Path(out_dir)) for name in studies]
