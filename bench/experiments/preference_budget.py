"""Learning from an annotator's feedback: AIHF, SFT on its demonstrations and the classic pipeline (a Bradley-Terry
reward model, then DDPO on it), by the number of preference pairs (study `preference_budget`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.experiments.suite import Suite
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, cell_of, ci, final_budget
from models.io import atomic_write_bytes

PREFERENCE_BUDGETS = (100, 300, 1000)


def feedback() -> Suite:
    """Learning from the annotator of the `gold` reward: AIHF, SFT on its demonstrations, and the classic pipeline
    (a Bradley-Terry reward model, then DDPO on it) at three preference budgets, on the diffusion model."""
    variants = {
        f"{method}/pairs-{pairs}": {"preference_pairs": pairs}
        for method in ("aihf", "pipeline")
        for pairs in PREFERENCE_BUDGETS
    }
    return Suite(
        "feedback",
        methods=("base", "sft", *variants),
        rewards=("gold",),
        variants=variants,
        studies=(write_preference_budget,),
    )


def write_preference_budget(results: pd.DataFrame, out: Path) -> Path:
    final = final_budget(results)
    columns = [
        ("reward", "hidden reward ↑"),
        ("judge_acc", "judge acc ↑"),
        ("diversity", "diversity ↑"),
        ("fid", "FID ↓"),
    ]
    budgets = {
        str(label): json.loads(cell["config_json"].iloc[0])["method_config"].get("preference_pairs")
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
        cell = cell_of(final, label)
        metrics = [ci(by_seed(cell, PRIMARY_SPLIT, metric).to_numpy()) for metric, _ in columns]
        pairs = budgets[label] if budgets[label] is not None else "—"
        lines.append(
            f"| {pairs} | {label} | {cell['seed'].nunique()} | {cell['labels'].mean():g} | "
            + " | ".join(metrics)
            + " |"
        )
    path = out / "preference_budget.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
