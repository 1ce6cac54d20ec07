"""SAS and DDPO evaluated with other sampler steps than they trained with: study `discretization`, the reward gain each
keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.evaluate import EvalConfig
from bench.experiments.suite import Suite
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, cell_of, ci, final_budget, step_splits
from bench.stats import bootstrap_ci
from models.io import atomic_write_bytes
from worlds import world_entry

DISCRETIZATION_STEPS = (10, 40)


def sas_discretization() -> Suite:
    """SAS and DDPO trained with the diffusion model's 20 sampler steps, evaluated with 20 and also with 10 and
    40 steps, on `digit`: how much of the reward gain each keeps under another discretization. SAS also
    trains on the fixed grid, to tell its objective from its random grids."""
    return Suite(
        "sas-discretization",
        methods=("base", "sas", "sas/fixed-grid", "ddpo"),
        rewards=("digit",),
        variants={"sas/fixed-grid": {"grid": "fixed"}},
        eval=EvalConfig(also_steps=DISCRETIZATION_STEPS),
        studies=(write_discretization,),
    )


def write_discretization(results: pd.DataFrame, out: Path) -> Path:
    final = final_budget(results)
    base_label = "base@diffusion"
    base = cell_of(final, base_label)
    if base.empty:
        raise ValueError(f"the discretization study needs {base_label} runs: gains are measured against them")
    trained = final.loc[final["label"] != base_label]
    world = world_entry(trained["world"].iloc[0])
    trained_steps = (
        json.loads(trained["config_json"].iloc[0])["eval"].get("steps")
        or world.generator_class(trained["model"].iloc[0]).default_steps
    )
    splits = step_splits(final)
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
    for label, cell in trained.groupby("label", sort=False):
        gains = {split: by_seed(cell, split, "reward") - by_seed(base, split, "reward").mean() for _, split in splits}
        trained = gains[PRIMARY_SPLIT].to_numpy()
        kept = []
        for steps, split in splits:
            if steps is None:
                continue
            other = gains[split].to_numpy()

            def share(seeds, axis=-1, other=other, trained=trained):
                seeds = seeds.astype(int)
                return other[seeds].mean(axis=axis) / trained[seeds].mean(axis=axis)

            kept.append(ci(bootstrap_ci(np.arange(len(trained), dtype=float), share)))
        judge = [ci(by_seed(cell, split, "judge_acc").to_numpy()) for _, split in splits]
        lines.append(
            f"| {label} | {cell['seed'].nunique()} | "
            + " | ".join(ci(g.to_numpy()) for g in gains.values())
            + " | "
            + " | ".join(kept)
            + " | "
            + " | ".join(judge)
            + " |"
        )
    base_row = [ci(by_seed(base, split, "judge_acc").to_numpy()) for _, split in splits]
    lines += ["", "The base model's judge accuracy: " + ", ".join(f"{n}: {v}" for n, v in zip(names, base_row)) + "."]
    path = out / "discretization.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
