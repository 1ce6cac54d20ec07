"""ROCM against DDPO on the consistency model: the reward queries each needs to reach the other's reward.

Study `efficiency`: the reward queries a method needs to reach a reference method's final reward, as a fraction of
the reference's: the method's mean reward-vs-queries curve over the milestones (starting from the base model at 0
queries) is interpolated linearly to the first point where it reaches the reference's final mean reward.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.experiments.suite import Suite
from bench.experiments.tables import PRIMARY_SPLIT, ci, efficiency, fraction_text
from models.io import atomic_write_bytes


def rocm_efficiency() -> Suite:
    """ROCM against DDPO on the consistency model (and DDPO on the diffusion model) on `digit`, evaluated
    at ten milestones, for the reward queries each needs to reach a reward ."""
    return Suite(
        "rocm-efficiency",
        methods=("base@consistency", "rocm@consistency", "ddpo@consistency", "ddpo"),
        rewards=("digit",),
        milestones=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0),
        # the first milestones sit one or two DDPO steps in on purpose (5,120 NFE of the first 6,000 on the diffusion
        # model): the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.9,
        studies=(write_efficiency,),
    )


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
            f"{ci(study['target'])} | {ci(study['gain'])} | {study['reference_queries']:.0f} | {queries} | "
            f"{fraction_text(fraction, low, high)} |"
        )
    path = out / "efficiency.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
