"""The scenes suite, the leaderboard of the compositional world (GenEval and OCR in miniature), and its study: GenEval's
table per prompt family, with the reward reader's excess over the judge (hacking) and base -> best.

Its entries come from what each method declares, as the default suite's (bench/experiments/suite.py:
leaderboard_entries), on the world's diffusion and flow models (it has no consistency model: docs/guide.md says why);
a method compared on neither (rocm, on its consistency model elsewhere; sft and pipeline, compared in the feedback
suite on digits) joins on its first family, so that every method is on this leaderboard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import pandas as pd

from bench.budget import Budget
from bench.experiments.default import smoke as smoke_suite
from bench.experiments.suite import SAMPLER_VARIANTS, TUNED, Suite, leaderboard_entries, read_tuned, tuned_file
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, cell_of, ci, final_budget, write_tuning
from bench.stats import bootstrap_ci
from models.io import atomic_write_bytes
from worlds import ARTIFACTS, world_entry

LAYERS = (ARTIFACTS / "results", ARTIFACTS.parent / "results")
"""Where a suite's tuned.json is looked for: its local layer, then its committed one (bench/layers.py)."""


def scenes(smoke: bool = False) -> Suite:
    """The default suite's methods on the compositional world (GenEval and OCR in miniature): both rewards, 3 seeds,
    300k NFE. `smoke`: its tiny twin, at the smoke suite's size."""
    suite = Suite(
        "scenes",
        methods=leaderboard_entries("scenes", every_method=True),
        rewards=("geneval", "ocr"),
        world="scenes",
        variants=SAMPLER_VARIANTS,
        studies=(write_families, write_tuning),
    )
    if smoke:
        return dataclasses.replace(
            smoke_suite(),
            name="scenes-smoke",
            # ROCM's step on the scenes' diffusion model costs 108 NFE: the smoke size's 400 would pass its first
            # milestone by more than the smoke tolerance
            budget=Budget("nfe", 480),
            methods=suite.methods,
            variants=suite.variants,
            rewards=suite.rewards,
            world="scenes-tiny",
            studies=suite.studies,
        )
    return suite


def scenes_tuned() -> Suite:
    """The scenes suite's tuned cells (tuned.json of `make tune SUITE=scenes`, local or committed): each at its tuned
    options on 5 fresh seeds, into the scenes store beside the defaults, whose leaderboard then shows both."""
    suite = scenes()
    tuned = tuned_options(suite.name)
    cells = [key.partition("/") for key in tuned]
    methods = tuple(dict.fromkeys(f"{cell.replace('@', f'/{TUNED}@')}" for cell, _, reward in cells))
    rewards = tuple(r for r in suite.rewards if any(reward == r for _, _, reward in cells))
    return dataclasses.replace(
        suite,
        name="scenes-tuned",
        methods=methods,
        rewards=rewards,
        seeds=tuple(range(5)),
        tuned=tuned,
        results="scenes",
    )


def tuned_options(suite: str) -> dict[str, dict[str, object]]:
    """The tuned options of suite `suite`'s cells: its tuned.json in the local layer, else the committed one; {} if
    neither has one."""
    found = [tuned_file(layer / suite) for layer in LAYERS if tuned_file(layer / suite).is_file()]
    return read_tuned(found[0]) if found else {}


def write_families(results: pd.DataFrame, out: Path) -> Path:
    """GenEval's table in miniature (the compositional world): per reward and model, every cell at the largest budget
    with the judge's score per prompt family on held-out combinations, the overall score, the rewards' reader's
    overall score and its excess over the judge's (reward hacking); then base -> best on the overall score and on
    text rendering, and whether the best method's interval separates from the runner-up's."""
    final = final_budget(results)
    # the world's families, in the order its evaluation lists them (judge_score is their mean)
    entry = world_entry(final["world"].iloc[0])
    metrics = entry.metrics
    overall_scores = ("judge_score", "judge_soft")  # the families' means: strict (GenEval's) and soft
    families = [m.removeprefix("judge_") for m in metrics if m.startswith("judge_") and m not in overall_scores]
    family_columns = [f"judge_{family}" for family in families]
    lines = [
        "# Prompt families: GenEval and OCR in miniature",
        "",
        f"Budget {final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}, on `{PRIMARY_SPLIT}` prompts "
        "(combinations no train prompt has); mean [95% bootstrap CI] over seeds. Each family's score is the "
        "fraction of its images whose judge reading satisfies the prompt; `overall` is their mean (GenEval's score, "
        "text rendering as a seventh task). `soft` is GenEval 2's soft score in miniature: per family the mean share "
        "of each prompt's atoms (each digit, its count, its colour, the relation, each character of a number) the "
        "judge reads as satisfied, averaged over the families as `overall` is. `kernel` is `overall` as the second "
        "judge reads the images (a kernel machine matching pixels, where the judge's CNN learns strokes). `reader` is "
        "the same overall score as the rewards' reader reads the images, and `reader - judge` its excess (per seed): a "
        "method that raises it satisfies the reward's reader, not the prompt.",
    ]
    for key, cells in final.groupby(["reward", "model"]):
        reward, model = cast(tuple, key)
        lines += [
            "",
            f"## Reward: {reward}, model: {model}",
            "",
            "| method | seeds | overall ↑ | soft ↑ | kernel ↑ | "
            + " | ".join(families)
            + " | reader ↑ | reader - judge ↓ |",
            "|---|---|---|---|---|" + "---|" * len(families) + "---|---|",
        ]
        overall = {str(label): by_seed(cell, PRIMARY_SPLIT, "judge_score") for label, cell in cells.groupby("label")}
        base = next((label for label in overall if label.startswith("base@")), None)
        trained = sorted((label for label in overall if label != base), key=lambda k: -overall[k].mean())
        for label in [base, *trained] if base else trained:
            cell = cell_of(cells, label)
            reader = by_seed(cell, PRIMARY_SPLIT, "reader_score")
            values = [ci(by_seed(cell, PRIMARY_SPLIT, m).to_numpy()) for m in family_columns]
            soft, kernel = (
                ci(by_seed(cell, PRIMARY_SPLIT, m).to_numpy()) for m in ("judge_soft", entry.second_judge_metric)
            )
            lines.append(
                f"| {label} | {cell['seed'].nunique()} | {ci(overall[label].to_numpy())} | {soft} | {kernel} | "
                + " | ".join(values)
                + f" | {ci(reader.to_numpy())} | {ci((reader - overall[label]).to_numpy())} |"
            )
        if base is None or not trained:
            continue
        lines.append("")
        for metric, name in (("judge_score", "overall"), ("judge_ocr", "ocr")):
            per_method = {label: by_seed(cell_of(cells, label), PRIMARY_SPLIT, metric) for label in overall}
            best, *rest = sorted(trained, key=lambda k: -per_method[k].mean())
            text = f"- {name}: {base} {ci(per_method[base].to_numpy())} -> {best} {ci(per_method[best].to_numpy())}"
            if rest:
                separated = bootstrap_ci(per_method[best].tolist())[1] > bootstrap_ci(per_method[rest[0]].tolist())[2]
                text += f"; the runner-up, {rest[0]}, {ci(per_method[rest[0]].to_numpy())}: the intervals " + (
                    "separate" if separated else "overlap"
                )
            lines.append(text)
    path = out / "families.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
