"""The 2026 methods against their papers' claims, on the compositional world where methods separate; study
`claims-2026`, a table per claim.

Each paper claims its method beats a reference, mostly Flow-GRPO, in speed (the compute to a reward), in the reward
reached, or in hacking (the reward's reader against the judge no method sees). Here every claim's method and its
references run the same budget on the same model, prompts and seeds, evaluated at eight milestones so that the
compute each needs to reach its reference's final reward is read off its curve (bench/experiments/tables.py:
efficiency) in NFE, reward queries and wall seconds, each as a fraction of the reference's, with an interval that
resamples each side's seeds. Beside it, the final reward, the judge, the reader's excess over the judge and the
diversity, and the judge read where the method's reward reaches the reference's: the judge at equal reward, which
says whether a method that gets there faster got there by hacking.

Suite `claims-2026` runs the claims on `geneval`; Direct-Align's, a reward-gradient method's, needs a reward with
gradients, and runs on `ocr` in suite `claims-2026-ocr`, which writes into the same store. GDPO's claim, a balance
across several rewards, is the multi-reward study's (results/multi-reward/).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from bench.experiments.suite import SAMPLER_VARIANTS, Suite
from bench.experiments.tables import PRIMARY_SPLIT, by_seed, cell_of, ci, efficiency, final_budget, fraction_text
from models.io import atomic_write_bytes

BASE = "base@scene-flow"
FLOW_GRPO = "flow_grpo@scene-flow"
CPS = "flow_grpo/cps@scene-flow"


class Claim(NamedTuple):
    paper: str
    claim: str
    method: str
    references: tuple[str, ...]
    reward: str


CLAIMS = (
    Claim(
        "CPS, coefficients-preserving sampling (arXiv 2509.05952)",
        "faster and more stable convergence than the Flow-SDE; a higher GenEval",
        CPS,
        (FLOW_GRPO,),
        "geneval",
    ),
    Claim(
        "Flow-DPPO (arXiv 2606.11025)",
        "beats Flow-GRPO and Flow-CPS on GenEval (GenEval2 48.1 against 39.9 and 44.6 on SD3.5-M)",
        "flow_dppo@scene-flow",
        (FLOW_GRPO, CPS),
        "geneval",
    ),
    Claim("AWM (arXiv 2509.25050)", "up to 24x faster than Flow-GRPO", "awm@scene-flow", (FLOW_GRPO,), "geneval"),
    Claim(
        "DGPO (arXiv 2510.08425)",
        "about 20x faster than Flow-GRPO; GenEval 0.63 -> 0.97",
        "dgpo@scene-flow",
        (FLOW_GRPO,),
        "geneval",
    ),
    Claim(
        "GARDO (arXiv 2512.24138)",
        "less reward hacking and more diversity than Flow-GRPO at the same efficiency",
        "gardo@scene-flow",
        (FLOW_GRPO,),
        "geneval",
    ),
    Claim(
        "Pref-GRPO (arXiv 2508.20751)",
        "fewer illusory advantages than pointwise rewards, so less reward hacking",
        "pref_grpo@scene-flow",
        (FLOW_GRPO,),
        "geneval",
    ),
    Claim(
        "TempFlow-GRPO (arXiv 2508.04324)",
        "better credit assignment than Flow-GRPO: a higher reward in fewer steps",
        "tempflow_grpo@scene-flow",
        (FLOW_GRPO,),
        "geneval",
    ),
    Claim(
        "the ELBO recipe (arXiv 2602.04663)",
        "GenEval 0.24 -> 0.95 4.6x faster than Flow-GRPO and 2x faster than DiffusionNFT",
        "elbo@scene-flow",
        (FLOW_GRPO, "diffusion_nft@scene-flow"),
        "geneval",
    ),
    Claim(
        "SRPO's Direct-Align (arXiv 2509.06942)",
        "reward gradients without the late-step bias of ReFL and DRaFT, so less reward hacking",
        "direct_align@scene-flow",
        ("refl@scene-flow", "draft@scene-flow"),
        "ocr",
    ),
)

MILESTONES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
"""Eight evaluations per run, dense early, where the fast methods claim to reach their references' rewards."""

SPENT_ON = (("nfe", "NFE"), ("reward_queries", "reward queries"), ("wall_s", "wall seconds"))


def entries(reward: str) -> tuple[str, ...]:
    """The base model and every method and reference of the claims on `reward`, in the claims' order."""
    named = [entry for c in CLAIMS if c.reward == reward for entry in (*c.references, c.method)]
    return tuple(dict.fromkeys([BASE, *named]))


def claims_2026() -> Suite:
    """The claims on `geneval`: each method and its references on the scenes world's flow model, 3 seeds, 300k NFE,
    evaluated at eight milestones."""
    return Suite(
        "claims-2026",
        methods=entries("geneval"),
        rewards=("geneval",),
        world="scenes",
        variants=SAMPLER_VARIANTS,
        milestones=MILESTONES,
        # the first milestone, 15k NFE, is a few steps of the costliest method: the study reads the compute each run
        # actually used at a milestone, not the milestone
        budget_tolerance=0.9,
        studies=(write_claims,),
    )


def claims_2026_ocr() -> Suite:
    """Direct-Align's claim, on `ocr` (a reward with gradients), into the claims-2026 store."""
    return dataclasses.replace(
        claims_2026(), name="claims-2026-ocr", methods=entries("ocr"), rewards=("ocr",), results="claims-2026"
    )


def write_claims(results: pd.DataFrame, out: Path) -> Path:
    """A table per claim: the claim's references, then its method against each, as the module docstring says."""
    final = final_budget(results)
    lines = [
        "# The 2026 methods against their papers' claims",
        "",
        f"Scenes world, flow model (`scene-flow`), on `{PRIMARY_SPLIT}` prompts; budget "
        f"{final['budget_unit'].iloc[0]} {final['budget'].iloc[0]:g}, eight milestones; mean [95% bootstrap CI] over "
        "seeds. A method's row reads the compute it needs for its mean reward curve (from the base model at 0) to "
        "reach its reference's final reward, as a fraction of the reference's (`never`: not within the budget; the "
        "interval resamples each side's seeds), and the judge where it does (the judge at equal reward, from the "
        "mean curves); where the method stops below, the reference's row against the method's final reward reads "
        "the reference's judge at equal reward instead. Hacking is the reward's reader over the judge (reader - "
        "judge). GDPO's claim, a balance across several rewards, is the multi-reward study's "
        "(results/multi-reward/multi-reward.md).",
    ]
    for claim in CLAIMS:
        lines += _claim_table(results, final, claim)
    path = out / "claims-2026.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _claim_table(results: pd.DataFrame, final: pd.DataFrame, claim: Claim) -> list[str]:
    ours = final.loc[final["reward"] == claim.reward]
    lines = [
        "",
        f"## {claim.paper}",
        "",
        f"Claim: {claim.claim}. Reward `{claim.reward}`.",
        "",
        "| run | reward ↑ | judge ↑ | reader - judge ↓ | diversity ↑ | "
        + " | ".join(f"{name} to the reference's reward" for _, name in SPENT_ON)
        + " | judge at equal reward ↑ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for reference in claim.references:
        if not cell_of(ours, reference).empty:
            lines.append(f"| {reference} | {_finals(cell_of(ours, reference))} | 1 | 1 | 1 | |")
    if cell_of(ours, claim.method).empty:
        return [*lines, f"| {claim.method} | no runs yet | | | | | | | |"]
    for reference in claim.references:
        reached = _against(results, ours, claim.method, reference, claim.reward, lines)
        if not reached and not cell_of(ours, reference).empty:
            # the method stops below its reference: the reference read where it passed the method's final reward
            _against(results, ours, reference, claim.method, claim.reward, lines)
    return lines


def _against(
    results: pd.DataFrame, final: pd.DataFrame, method: str, target: str, reward: str, lines: list[str]
) -> bool:
    """Appends the row of `method` against `target`'s final reward (nothing where either has no runs); whether the
    method's mean curve reached it."""
    studies = [
        efficiency(results, method, target, BASE, reward, spent_on, read=("judge_score",)) for spent_on, _ in SPENT_ON
    ]
    if any(study is None for study in studies):
        return False
    fractions = " | ".join(fraction_text(*study["fraction"]) for study in studies if study is not None)
    judge = studies[0]["at_target"]["judge_score"] if studies[0] is not None else math.nan
    at_target = "never" if math.isnan(judge) else f"{judge:.3f}"
    lines.append(f"| {method} vs {target} | {_finals(cell_of(final, method))} | {fractions} | {at_target} |")
    return not math.isnan(judge)


def _finals(cell: pd.DataFrame) -> str:
    """A cell's final reward, judge, reader - judge and diversity, each mean [CI] over seeds."""
    reward, judge = by_seed(cell, PRIMARY_SPLIT, "reward"), by_seed(cell, PRIMARY_SPLIT, "judge_score")
    hacking = by_seed(cell, PRIMARY_SPLIT, "reader_score") - judge
    diversity = by_seed(cell, PRIMARY_SPLIT, "diversity")
    return " | ".join(ci(values.to_numpy()) for values in (reward, judge, hacking, diversity))
