"""The GRPO family side by side with DDPO and Diffusion-DPO on the flow model; study `grpo`, its claims: MixGRPO's and
MixGRPO-Flash's speed (the efficiency measure over wall seconds and NFE), Flow-GRPO's denoising reduction, and
whether its KL or GRPO-Guard holds the judge while the proxy rises.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.evaluate import EvalConfig
from bench.experiments.suite import TEN_MILESTONES, Suite
from bench.experiments.tables import (
    PRIMARY_SPLIT,
    TRAIN_SPLIT,
    by_seed,
    cell_of,
    ci,
    efficiency,
    flow_study,
    fraction_text,
    step_splits,
)
from models.io import atomic_write_bytes


def grpo_family() -> Suite:
    """The GRPO family and Diffusion-DPO side by side with DDPO on the flow model, on `compress` (where the methods
    move: the `digit` reward saturates), evaluated at ten milestones and also at Flow-GRPO's 10 training steps,
    with Flow-GRPO also trained at the default steps, without its KL, in its Fast mode (the SDE on a random window of
    2 of the first 5 steps) and with GRPO-Guard instead of the KL, MixGRPO also as MixGRPO-Flash (4 ODE steps after
    the window), and DPO also offline."""
    variants = {
        "flow_grpo/train-20": {"sample_steps": None},
        "flow_grpo/no-kl": {"kl_coef": 0.0},
        "flow_grpo/fast": {"sde_window": 2},
        # the regulated log-ratio is about 4x narrower than the plain one here (its std is the step's, ~0.2): the
        # clip range shrinks with it, so a similar share of steps is clipped at the start
        "flow_grpo/guard": {"guard": True, "kl_coef": 0.0, "clip_range": 0.05},
        "mix_grpo/flash": {"flash_steps": 4},
        "dpo/offline": {"pairing": "offline"},
    }
    methods = (
        "base",
        "ddpo",
        "flow_grpo",
        "flow_grpo/train-20",
        "flow_grpo/no-kl",
        "flow_grpo/fast",
        "flow_grpo/guard",
        "mix_grpo",
        "mix_grpo/flash",
        "dance_grpo",
        "dpo",
    )
    return Suite(
        "grpo-family",
        methods=tuple(f"{m}@flow" for m in (*methods, "dpo/offline")),
        rewards=("compress",),
        variants=variants,
        milestones=TEN_MILESTONES,
        # ten milestones draw the early curve: the first (30k) is five steps of Flow-GRPO at 20 steps (6,144 NFE each);
        # the study reads the compute each run actually used, not the milestone
        budget_tolerance=0.25,
        eval=EvalConfig(also_steps=(10,)),
        studies=(write_grpo,),
    )


GRPO_SPEED = (
    ("mix_grpo@flow", "flow_grpo@flow"),
    ("mix_grpo@flow", "dance_grpo@flow"),
    ("dance_grpo@flow", "flow_grpo@flow"),
    ("mix_grpo/flash@flow", "mix_grpo@flow"),
    ("mix_grpo/flash@flow", "dance_grpo@flow"),
)


def write_grpo(results: pd.DataFrame, out: Path) -> Path:
    """The GRPO family's claims, measured: MixGRPO's speed, Flow-GRPO's denoising reduction and its KL."""
    final, base, reward, lines = flow_study(results, "grpo", "The GRPO family's claims")
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
        fractions = [fraction_text(*estimate) for estimate in (wall["fraction"], nfe["fraction"])]
        lines.append(f"| {method} | {reference} | {fractions[0]} | {fractions[1]} | {ci(wall['target'])} |")
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
    steps = [split for _, split in step_splits(final)]
    for label in ("flow_grpo@flow", "flow_grpo/train-20@flow"):
        cell = cell_of(final, label)
        if cell.empty:
            continue
        gains = [
            ci((by_seed(cell, split, "reward") - by_seed(base, split, "reward").mean()).to_numpy()) for split in steps
        ]
        gains += ["—"] * (2 - len(gains))
        judge = ci(by_seed(cell, PRIMARY_SPLIT, "judge_acc").to_numpy())
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
        cell = cell_of(final, label)
        if cell.empty:
            continue
        values = [by_seed(cell, TRAIN_SPLIT, "reward")] + [
            by_seed(cell, PRIMARY_SPLIT, metric) for metric in ("judge_acc", "diversity", "fid")
        ]
        lines.append(f"| {label} | " + " | ".join(ci(v.to_numpy()) for v in values) + " |")
    path = out / "grpo.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
