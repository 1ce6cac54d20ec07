"""The direct-gradient and likelihood-free families against the policy gradients; study `direct`, their claims:
DiffusionNFT's and DRaFT-1's efficiency, and the judge at equal reward (over-optimization).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.experiments.suite import TEN_MILESTONES, Suite
from bench.experiments.tables import (
    PRIMARY_SPLIT,
    by_seed,
    cell_of,
    ci,
    efficiency,
    flow_study,
    fraction_text,
)
from models.io import atomic_write_bytes


def direct_vs_pg() -> Suite:
    """The direct-gradient and likelihood-free families against the policy gradients on the flow model, at ten
    milestones: DRaFT-1 and full backpropagation (`draft/full`, K = T), DRaFT-LV, AlignProp, ReFL, Adjoint Matching
    and DiffusionNFT against DDPO and Flow-GRPO, with ROCM on its consistency model beside DRaFT-1 there (study:
    `direct`). The reward is the differentiable `gold` (the judge's log-probability of the
    prompted digit plus bold strokes): `digit` leaves no room, as the base models' log-probability of the prompted
    digit is already about -0.03."""
    variants: dict[str, dict[str, object]] = {"draft/full": {"grad_steps": 20}, "draft/lv": {"lv_samples": 2}}
    flow = (
        "base",
        "ddpo",
        "flow_grpo",
        "diffusion_nft",
        "draft",
        "draft/full",
        "draft/lv",
        "alignprop",
        "refl",
        "adjoint_matching",
    )
    return Suite(
        "direct-vs-pg",
        methods=(*(f"{m}@flow" for m in flow), "base@consistency", "rocm@consistency", "draft@consistency"),
        rewards=("gold",),
        variants=variants,
        milestones=TEN_MILESTONES,
        # the first milestone (30k) is a few iterations of the costliest methods (AlignProp's ~1.6k NFE, DDPO's
        # ~3k); the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.25,
        studies=(write_direct,),
    )


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
    final, base, reward, lines = flow_study(
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
        if cell_of(results, start).empty:
            continue
        estimates = [efficiency(results, method, reference, start, reward, axis) for axis in COMPUTE_AXES]
        found = [estimate for estimate in estimates if estimate is not None]
        if len(found) < len(estimates):
            continue
        fractions = " | ".join(fraction_text(*estimate["fraction"]) for estimate in found)
        lines.append(f"| {method} | {reference} | {fractions} | {ci(found[0]['target'])} |")
    start_values = (
        by_seed(base, PRIMARY_SPLIT, "reward").mean(),
        by_seed(base, PRIMARY_SPLIT, "judge_acc").mean(),
    )
    flow_labels = sorted(label for label in final["label"].unique() if label.endswith("@flow") and label != base_label)
    finals = {label: by_seed(cell_of(final, label), PRIMARY_SPLIT, "reward").mean() for label in flow_labels}
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
        label: [judge_at_reward(cell_of(results, label), start_values, level) for level in levels]
        for label in flow_labels
    }
    # best judge at the higher level first (those that never reach it after), then at the lower one
    for label in sorted(flow_labels, key=lambda label: [-(-1.0 if math.isnan(j) else j) for j in judges[label][::-1]]):
        cell = cell_of(final, label)
        shown = ["—" if math.isnan(j) else f"{j:.3f}" for j in judges[label]]
        values = [by_seed(cell, PRIMARY_SPLIT, metric) for metric in ("reward", "judge_acc", "diversity", "fid")]
        lines.append(f"| {label} | {' | '.join(shown)} | " + " | ".join(ci(v.to_numpy()) for v in values) + " |")
    path = out / "direct.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
