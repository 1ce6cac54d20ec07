"""The policy-gradient methods' training diagnostics side by side, on the compositional world; study `pg-diagnostics`.

The questions practitioners ask most of these methods are about their training, not their final numbers: does the
importance ratio start at 1, how much of the update the trust region bounds, how far the policy drifts from its
reference, and how many groups teach nothing. GenEval's reward gives partial credit in steps of a prompt's atoms,
so the samples of one prompt often all score alike: such a group's advantages are all 0 (DAPO's dynamic sampling
drops them and samples again). Every policy-gradient method runs here at its leaderboard options on the scenes world's
flow model, 3 seeds, 300k NFE; the study's table is each method's diagnostics (bench/diagnostics.py: summary_table)
beside its final reward and judge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from bench.diagnostics import CELL_KEYS, SUMMARY, summary_cells, summary_table
from bench.experiments.default import smoke as smoke_suite
from bench.experiments.suite import SAMPLER_VARIANTS, Suite
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, ci, final_budget, study_store
from bench.store import Store
from models.io import atomic_write_bytes

METHODS = (
    "ddpo",
    "flow_grpo",
    "flow_grpo/cps",
    "mix_grpo",
    "dance_grpo",
    "flow_dppo",
    "pref_grpo",
    "gardo",
    "tempflow_grpo",
)
"""Every policy-gradient method (methods/toolkit/policy_gradient.py: ppo_epochs) a flow model runs, and CPS's sampler
on Flow-GRPO."""


def pg_diagnostics(smoke: bool = False) -> Suite:
    """The policy-gradient methods and the base model on the scenes world's flow model, `geneval`, 3 seeds, 300k NFE.
    `smoke`: its tiny twin, at the smoke suite's size."""
    suite = Suite(
        "pg-diagnostics",
        methods=tuple(f"{m}@scene-flow" for m in ("base", *METHODS)),
        rewards=("geneval",),
        world="scenes",
        variants=SAMPLER_VARIANTS,
        studies=(write_diagnostics,),
    )
    if smoke:
        return dataclasses.replace(
            smoke_suite(),
            name="pg-diagnostics-smoke",
            **{f: getattr(suite, f) for f in SMOKE_KEEPS},
            world="scenes-tiny",
        )
    return suite


SMOKE_KEEPS = ("methods", "rewards", "variants", "studies")
"""What the smoke twin keeps of the suite; the rest is the smoke suite's size."""


def write_diagnostics(results: pd.DataFrame, out: Path) -> Path:
    """diagnostics.md: per method, its final reward and judge (mean [95% CI] over seeds) and its training
    diagnostics, each run's steps reduced as the column says, then the mean over seeds."""
    with Store(study_store(results, out), read_only=True) as store:
        diagnostics = store.diagnostics_frame()
    # the ranked runs' cells, from the results the study was handed (already labelled method[/variant]), rather than
    # reading the store's runs and results a second time
    runs = results.loc[:, ["run_id", *CELL_KEYS]].drop_duplicates("run_id")
    summary = summary_table(runs, diagnostics)
    final = final_budget(results)
    header = ["method", "seeds", "reward", "judge", *(column for column, *_ in SUMMARY)]
    lines = [
        "# The policy-gradient methods' training diagnostics",
        "",
        f"Reward `{final['reward'].iloc[0]}` on the scenes world's flow model; reward and judge on `{PRIMARY_SPLIT}` "
        f"at the full budget ({final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}), mean [95% bootstrap CI] "
        "over seeds. The diagnostics: each run's training steps reduced as the column says, then the mean over seeds "
        "(docs/guide.md: Training diagnostics).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in summary.to_dict("records"):
        cell = final.loc[final["label"] == f"{row['method']}@{row['model']}"]
        reward, judge = (ci(by_seed(cell, PRIMARY_SPLIT, metric)) for metric in ("reward", "judge_score"))
        lines.append("| " + " | ".join([row["method"], str(row["seeds"]), reward, judge, *summary_cells(row)]) + " |")
    path = out / "diagnostics.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
